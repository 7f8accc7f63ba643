/* The forker of supervisor.js, as a static program: it needs nothing from the image.

   supervisor.js describes it (see FORKER there: its perl twin takes the same requests, and `r`
   and `t` besides, as the supervisor reads the host's frames where the perl one runs). It
   forks with vfork(): the child borrows the forker's memory until it execs the shell, so nothing
   of the forker is copied or faulted in again, as it is after perl's fork() (about 110 page
   faults and 0.7 ms of a core per command). Unlike the perl forker it reads the host's frames
   itself (descriptor 5): it runs the commonest command (RUN with no stdin and a script of at most
   SCRIPT_LIMIT bytes) from end to end, with its timeout and SIGNALs, and passes every other frame
   on to the supervisor unchanged (descriptor 6), so that such a command costs Node.js nothing.
   Build: cc -static -O2 -o forker forker.c. Usage: forker SPARES, with descriptors 0-6 as
   supervisor.js's Forker sets them up. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

enum { RUN_FRAME = 1, SIGNAL_FRAME = 3, STDOUT_FRAME = 11, STDERR_FRAME = 12, EXIT_FRAME = 13 };
enum { HEADER_SIZE = 9, SCRIPT_LIMIT = 1024 };  /* supervisor.js's HEADER_SIZE, SCRIPT_PIPE_LIMIT */
enum { HOST_BACKLOG = 1 << 20, MAX_SPARES = 64, CHUNK = 65536 };
#define MAX_TIMER_MS 2147483647LL  /* as Node.js's setTimeout() takes it */

typedef struct { char *data; size_t length, capacity; } Buffer;

typedef struct Command {
  uint32_t id;
  pid_t pid;  /* its shell's, which leads its process group */
  long long deadline;  /* CLOCK_MONOTONIC ms of its timeout; 0: none */
  long long budget;  /* < 0: no limit */
  long long dropped;
  int timed_out, overlapped, ended, open_readers;
  long long oom;  /* the OOM kill count when it started; < 0: unknown */
} Command;

typedef struct { Command *command; int fd; } Reader;  /* fd: 1 or 2 */
typedef struct { pid_t pid; int script, out, err; } Spare;
typedef struct { pid_t pid; Command *command; } Child;  /* by pidfd */

static pid_t supervisor;
static int host = -1, frames_in = -1, null_fd = -1, oom_counter = -1;
static int host_in = -1, to_supervisor = -1;  /* the host's frames, and those passed on */
static char **waiting_shell;  /* argv of a waiting shell, from `w` */
static char **environment;  /* the shells' environment, from `v` */
static Spare spares[MAX_SPARES];
static int spare_count, spares_wanted;
static int supervisor_busy, host_gone;
static Buffer outbox, frames, inbox, answers, host_inbox, passed_on;
/* By descriptor: what each open descriptor is (the pidfds, and the commands' output pipes). */
static Reader *readers;
static Child *children;
static int table_size;

static void *must(void *pointer) {
  if (!pointer) {
    static const char message[] = "pydantic-deep-forker: out of memory\n";
    write(2, message, sizeof message - 1);
    _exit(1);  /* the supervisor ends with it */
  }
  return pointer;
}

static void append(Buffer *buffer, const void *data, size_t length) {
  if (buffer->length + length > buffer->capacity) {
    buffer->capacity = (buffer->length + length) * 2 + 256;
    buffer->data = must(realloc(buffer->data, buffer->capacity));
  }
  memcpy(buffer->data + buffer->length, data, length);
  buffer->length += length;
}

static void consume(Buffer *buffer, size_t length) {
  memmove(buffer->data, buffer->data + length, buffer->length - length);
  buffer->length -= length;
}

static void appendf(Buffer *buffer, const char *format, ...) {
  char text[512];
  va_list arguments;
  va_start(arguments, format);
  int length = vsnprintf(text, sizeof text, format, arguments);
  va_end(arguments);
  append(buffer, text, length < (int)sizeof text ? (size_t)length : sizeof text - 1);
}

static void fail(const char *what) {
  char text[300];
  int length = snprintf(text, sizeof text, "fail %s: %s\n", what, strerror(errno));
  write(1, text, length);
  exit(1);
}

static void grow_tables(int fd) {
  if (fd < table_size) return;
  int size = fd * 2 + 64;
  readers = must(realloc(readers, size * sizeof *readers));
  children = must(realloc(children, size * sizeof *children));
  memset(readers + table_size, 0, (size - table_size) * sizeof *readers);
  memset(children + table_size, 0, (size - table_size) * sizeof *children);
  table_size = size;
}

static long long oom_kills(void) {
  if (oom_counter < 0) return -1;
  char text[4097];
  ssize_t length = pread(oom_counter, text, sizeof text - 1, 0);
  if (length <= 0) return -1;
  text[length] = 0;
  for (char *line = text; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
    if (strncmp(line, "oom_kill ", 9) == 0) return atoll(line + 9);
  return -1;
}

static void frame(int kind, uint32_t id, const char *payload, size_t length) {
  if (host_gone) return;
  unsigned char head[HEADER_SIZE] = {(unsigned char)kind};
  for (int i = 0; i < 4; i++) {
    head[1 + i] = (unsigned char)(id >> (24 - 8 * i));
    head[5 + i] = (unsigned char)(length >> (24 - 8 * i));
  }
  append(&outbox, head, sizeof head);
  append(&outbox, payload, length);
}

static void write_host(void) {
  while (outbox.length) {
    ssize_t written = write(host, outbox.data, outbox.length);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      host_gone = 1;  /* closed: the supervisor sees its end too, and ends */
      outbox.length = 0;
      return;
    }
    consume(&outbox, written);
  }
}

static void kill_commands(void) {
  /* The process group of every command this process runs (not the supervisor's shells). */
  for (int fd = 0; fd < table_size; fd++)
    if (children[fd].command) kill(-children[fd].pid, SIGKILL);
}

static void exit_now(void) {
  /* The supervisor ended: so do the commands this process runs. */
  kill_commands();
  exit(0);
}

static void relay_frames(void) {
  /* What the supervisor wrote for the host, passed on a whole frame at a time. */
  char chunk[CHUNK];
  ssize_t length = read(frames_in, chunk, sizeof chunk);
  if (length < 0) return;
  if (length == 0) exit_now();
  append(&frames, chunk, length);
  size_t whole = 0;
  while (frames.length - whole >= HEADER_SIZE) {
    const unsigned char *size_bytes = (const unsigned char *)frames.data + whole + 5;
    size_t size = HEADER_SIZE + ((size_t)size_bytes[0] << 24 | size_bytes[1] << 16 | size_bytes[2] << 8 | size_bytes[3]);
    if (frames.length - whole < size) break;
    whole += size;
  }
  if (!host_gone) append(&outbox, frames.data, whole);
  consume(&frames, whole);
}

static void failure(uint32_t request) {
  const char *name = strerrorname_np(errno);
  appendf(&answers, "e %u %s %s\n", request, name ? name : "EIO", strerror(errno));
}

static pid_t start_shell(const int sources[4], char **args) {
  /* `sh ARGS` in a new session with SOURCES as its 0-3 (-1: closed): its pid, its exit watched;
     -1 and errno on failure. */
  pid_t pid = vfork();
  if (pid == 0) {
    /* Every source is above 3 or is /dev/null (3), and 0-2 are set before 3: no dup2 undoes
       an earlier one. */
    setsid();
    for (int target = 0; target < 4; target++)
      if (sources[target] >= 0) dup2(sources[target], target); else close(target);
    execve("/bin/sh", args, environment);
    static const char message[] = "sh: cannot run /bin/sh\n";
    write(2, message, sizeof message - 1);
    _exit(127);
  }
  if (pid < 0) return -1;
  int pidfd = syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) {  /* out of descriptors: a child we could not wait for is no child */
    int saved = errno;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    errno = saved;
    return -1;
  }
  grow_tables(pidfd);
  children[pidfd] = (Child){pid, NULL};
  return pid;
}

static char **copy_strings(const char *first, char **fields, int count) {
  /* FIRST (unless NULL) then the COUNT FIELDS, as a NULL-terminated array of copies. */
  char **strings = must(calloc(count + 2, sizeof *strings)), **next = strings;
  if (first) *next++ = must(strdup(first));
  for (int i = 0; i < count; i++) *next++ = must(strdup(fields[i]));
  return strings;
}

static void free_strings(char **strings) {
  for (int i = 0; strings && strings[i]; i++) free(strings[i]);
  free(strings);
}

static void spawn(char **fields, int count) {
  uint32_t request = strtoul(fields[0], NULL, 10);
  if (count < 5) { errno = EINVAL; failure(request); return; }
  int sources[4] = {null_fd, -1, -1, -1};
  int opened[4] = {-1, -1, -1, -1};
  for (int target = 0; target < 4; target++) {
    if (!*fields[1 + target]) continue;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%s", supervisor, fields[1 + target]);
    int mode = (target == 1 || target == 2 ? O_WRONLY : O_RDONLY) | O_CLOEXEC;
    if ((opened[target] = sources[target] = open(path, mode)) < 0) {
      failure(request);
      goto done;
    }
  }
  char **args = copy_strings("sh", fields + 5, count - 5);
  pid_t pid = start_shell(sources, args);
  free_strings(args);
  if (pid < 0) failure(request); else appendf(&answers, "p %u %d\n", request, pid);
done:
  for (int target = 0; target < 4; target++) if (opened[target] >= 0) close(opened[target]);
}

static void keep_spares(void) {
  /* Waiting shells up to SPARES; at the process limit fewer (the host's commands then go to the
     supervisor, which starts their shells). */
  while (waiting_shell && spare_count < spares_wanted) {
    int script[2], out[2], err[2];
    if (pipe2(script, O_CLOEXEC) < 0) return;
    if (pipe2(out, O_CLOEXEC) < 0) { close(script[0]); close(script[1]); return; }
    if (pipe2(err, O_CLOEXEC) < 0) { close(script[0]); close(script[1]); close(out[0]); close(out[1]); return; }
    int sources[4] = {null_fd, out[1], err[1], script[0]};
    pid_t pid = start_shell(sources, waiting_shell);
    close(out[1]);
    close(err[1]);
    close(script[0]);
    if (pid < 0) { close(script[1]); close(out[0]); close(err[0]); return; }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    spares[spare_count++] = (Spare){pid, script[1], out[0], err[0]};
  }
}

static Child *child_of(pid_t pid) {
  for (int fd = 0; fd < table_size; fd++) if (children[fd].pid == pid) return &children[fd];
  return NULL;
}

static long long now_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000LL + now.tv_nsec / 1000000;
}

static int commands_running(void) {
  for (int fd = 0; fd < table_size; fd++) if (children[fd].command) return 1;
  return 0;
}

static void all_overlapped(void) {
  for (int fd = 0; fd < table_size; fd++) if (children[fd].command) children[fd].command->overlapped = 1;
}

static int start_command(uint32_t id, long long budget, double timeout, const char *script, size_t length) {
  /* The host's command ID: SCRIPT to a waiting shell. 0 when none waits. */
  while (spare_count) {
    Spare spare = spares[0];
    memmove(spares, spares + 1, --spare_count * sizeof *spares);
    ssize_t written = write(spare.script, script, length);  /* at most SCRIPT_LIMIT: never blocks */
    close(spare.script);
    if (written < 0) {  /* the shell died (a pkill sh): its exit comes, and is told */
      close(spare.out);
      close(spare.err);
      continue;
    }
    /* Overlap decides the OOM report (see supervisor.py's docstring): the supervisor's commands
       learn of this one from `o`. */
    int overlapped = supervisor_busy || commands_running();
    all_overlapped();
    if (supervisor_busy) append(&answers, "o\n", 2);
    Command *command = must(calloc(1, sizeof *command));
    *command = (Command){.id = id, .pid = spare.pid, .budget = budget, .overlapped = overlapped,
                         .oom = oom_kills(), .open_readers = 2};
    if (timeout != 0) {  /* as Node.js's setTimeout(), which the supervisor's own commands use */
      double ms = timeout * 1000 < 1 ? 1 : timeout * 1000;
      command->deadline = now_ms() + (ms > MAX_TIMER_MS ? MAX_TIMER_MS : (long long)ms);
    }
    child_of(spare.pid)->command = command;
    grow_tables(spare.out > spare.err ? spare.out : spare.err);
    readers[spare.out] = (Reader){command, 1};
    readers[spare.err] = (Reader){command, 2};
    return 1;
  }
  return 0;
}

static Command *command_of(uint32_t id) {
  for (int fd = 0; fd < table_size; fd++)
    if (children[fd].command && children[fd].command->id == id) return children[fd].command;
  return NULL;
}

static void time_out(void) {
  /* Kill the process group of every command past its deadline. */
  long long now = now_ms();
  for (int fd = 0; fd < table_size; fd++) {
    Command *command = children[fd].command;
    if (!command || !command->deadline || command->deadline > now) continue;
    command->deadline = 0;
    command->timed_out = 1;
    kill(-command->pid, SIGKILL);
  }
}

static int next_timeout(void) {
  /* poll()'s timeout: the ms to the nearest deadline, or -1. */
  long long nearest = 0;
  for (int fd = 0; fd < table_size; fd++) {
    Command *command = children[fd].command;
    if (command && command->deadline && (!nearest || command->deadline < nearest)) nearest = command->deadline;
  }
  if (!nearest) return -1;
  long long wait = nearest - now_ms();
  return wait < 0 ? 0 : wait > MAX_TIMER_MS ? (int)MAX_TIMER_MS : (int)wait;
}

/* -- the host's frames: a JSON reader for what RUN and SIGNAL hold ------------------------------

   It understands exactly what the host sends (supervisor.py's docstring): an object of strings,
   numbers, booleans and nulls, in ASCII with escapes (Python's json.dumps). Anything else is not
   refused here but passed on: the supervisor reads it with JSON.parse and answers as it would. */

typedef struct { const char *at, *end; } Json;

static void skip_space(Json *json) {
  while (json->at < json->end && (*json->at == ' ' || *json->at == '\t' || *json->at == '\n' || *json->at == '\r'))
    json->at++;
}

static int read_hex4(Json *json, unsigned *unit) {
  if (json->end - json->at < 4) return 0;
  *unit = 0;
  for (int i = 0; i < 4; i++) {
    char c = *json->at++;
    *unit = *unit * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 99);
    if (*unit > 0xFFFF) return 0;
  }
  return 1;
}

static int read_string(Json *json, Buffer *text) {
  /* A string's UTF-8 into TEXT (a NUL or a lone surrogate: not understood). */
  if (json->at >= json->end || *json->at++ != '"') return 0;
  while (json->at < json->end) {
    unsigned char c = *json->at++;
    if (c == '"') return 1;
    if (c < 0x20 || c >= 0x80) return 0;
    if (c != '\\') { append(text, &c, 1); continue; }
    if (json->at >= json->end) return 0;
    const char *simple = strchr("\"\\/bfnrt", *json->at);
    if (simple && *json->at) {
      static const char decoded[] = "\"\\/\b\f\n\r\t";
      append(text, &decoded[simple - "\"\\/bfnrt"], 1);
      json->at++;
      continue;
    }
    if (*json->at++ != 'u') return 0;
    unsigned unit, low;
    if (!read_hex4(json, &unit) || unit == 0 || (unit >= 0xDC00 && unit <= 0xDFFF)) return 0;
    uint32_t point = unit;
    if (unit >= 0xD800 && unit <= 0xDBFF) {
      if (json->end - json->at < 2 || json->at[0] != '\\' || json->at[1] != 'u') return 0;
      json->at += 2;
      if (!read_hex4(json, &low) || low < 0xDC00 || low > 0xDFFF) return 0;
      point = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
    }
    unsigned char utf8[4];
    size_t size = point < 0x80 ? 1 : point < 0x800 ? 2 : point < 0x10000 ? 3 : 4;
    if (size == 1) utf8[0] = point;
    else {
      for (size_t i = size - 1; i > 0; i--, point >>= 6) utf8[i] = 0x80 | (point & 0x3F);
      utf8[0] = (0xF00 >> size) | point;
    }
    append(text, utf8, size);
  }
  return 0;
}

typedef struct { int is_null; double number; int boolean; Buffer text; char type; } JsonValue;  /* type: s n b z */

static int read_value(Json *json, JsonValue *value) {
  if (json->at >= json->end) return 0;
  if (*json->at == '"') { value->text.length = 0; value->type = 's'; return read_string(json, &value->text); }
  static const char *const words[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t size = strlen(words[i]);
    if ((size_t)(json->end - json->at) >= size && !memcmp(json->at, words[i], size)) {
      json->at += size;
      value->type = i == 2 ? 'z' : 'b';
      value->boolean = i == 0;
      return 1;
    }
  }
  char number[64];
  size_t size = 0;
  while (json->at + size < json->end && size < sizeof number - 1 && strchr("-+.eE0123456789", json->at[size])
         && json->at[size])
    size++;
  if (!size || size == sizeof number - 1) return 0;
  memcpy(number, json->at, size);
  number[size] = 0;
  char *parsed;
  value->number = strtod(number, &parsed);
  if (parsed != number + size) return 0;
  json->at += size;
  value->type = 'n';
  return 1;
}

typedef struct { Buffer command; int has_command, stdin_given; double timeout; long long max_output; } RunSpec;

static int read_member(Json *json, Buffer *key, JsonValue *value) {
  /* An object's `"key": value`, after any space: KEY as a NUL-terminated string. */
  key->length = 0;
  skip_space(json);
  if (!read_string(json, key)) return 0;
  skip_space(json);
  if (json->at >= json->end || *json->at++ != ':') return 0;
  skip_space(json);
  if (!read_value(json, value)) return 0;
  append(key, "", 1);
  return 1;
}

static int take_run_member(const char *key, const JsonValue *value, RunSpec *spec) {
  /* Whether KEY and its VALUE are a RUN spec's as understood here. */
  if (!strcmp(key, "command") && value->type == 's') {
    spec->command.length = 0;
    append(&spec->command, value->text.data, value->text.length);
    spec->has_command = 1;
  } else if (!strcmp(key, "timeout") && (value->type == 'n' || value->type == 'z')) {
    spec->timeout = value->type == 'n' ? value->number : 0;
  } else if (!strcmp(key, "max_output") && value->type == 'z') {
    spec->max_output = -1;
  } else if (!strcmp(key, "max_output") && value->type == 'n' && value->number >= 0
             && value->number <= 9007199254740992.0 && value->number == (double)(long long)value->number) {
    spec->max_output = (long long)value->number;
  } else if (!strcmp(key, "stdin") && (value->type == 'b' || value->type == 'z')) {
    spec->stdin_given = value->type == 'b' && value->boolean;
  } else {
    return 0;
  }
  return 1;
}

static int read_run(const char *payload, size_t length, RunSpec *spec) {
  /* A RUN frame's spec, when it is all understood: {"command", "timeout", "max_output", "stdin"}.
     (A NUL or a lone surrogate in the command is not understood: see read_string.) */
  Json json = {payload, payload + length};
  JsonValue value = {0};
  Buffer key = {0};
  spec->command.length = 0;
  spec->has_command = spec->stdin_given = 0;
  spec->timeout = 0;
  spec->max_output = -1;
  skip_space(&json);
  int understood = json.at < json.end && *json.at++ == '{';
  skip_space(&json);
  if (understood && json.at < json.end && *json.at == '}') json.at++;
  else while (understood) {
    understood = read_member(&json, &key, &value) && take_run_member(key.data, &value, spec);
    skip_space(&json);
    if (!understood || json.at >= json.end) { understood = 0; break; }
    char next = *json.at++;
    if (next == '}') break;
    understood = next == ',';
  }
  free(key.data);
  free(value.text.data);
  skip_space(&json);
  return understood && json.at == json.end && spec->has_command;
}

static int took_frame(int kind, uint32_t id, const char *payload, size_t length) {
  /* Whether this process handles the host's frame (else the supervisor does). */
  static RunSpec spec;
  if (kind == RUN_FRAME) {
    if (!read_run(payload, length, &spec) || spec.stdin_given || spec.command.length + 1 > SCRIPT_LIMIT) return 0;
    append(&spec.command, "\n", 1);
    return start_command(id, spec.max_output, spec.timeout, spec.command.data, spec.command.length);
  }
  Command *command = kind == SIGNAL_FRAME ? command_of(id) : NULL;
  if (!command) return 0;
  /* {"signal": N}: anything else is ignored, as the supervisor's kill() would throw it away. */
  Json json = {payload, payload + length};
  JsonValue value = {0};
  Buffer key = {0};
  skip_space(&json);
  if (json.at < json.end && *json.at++ == '{' && read_member(&json, &key, &value) && !strcmp(key.data, "signal")
      && value.type == 'n' && value.number >= 0 && value.number < 65)
    kill(-command->pid, (int)value.number);
  free(key.data);
  free(value.text.data);
  return 1;
}

static void end_of_host(void) {
  /* The host's stream ended: this process's commands are killed, and the supervisor is told by
     the end of what it is passed, so that it shuts down (and this process with it). */
  kill_commands();
  append(&answers, "h\n", 2);
  close(host_in);
  close(to_supervisor);
  host_in = to_supervisor = -1;
  passed_on.length = 0;
}

static void read_host(void) {
  char chunk[CHUNK];
  ssize_t length = read(host_in, chunk, sizeof chunk);
  if (length < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    end_of_host();
    return;
  }
  if (length == 0) { end_of_host(); return; }
  append(&host_inbox, chunk, length);
  size_t used = 0;
  while (host_inbox.length - used >= HEADER_SIZE) {
    const unsigned char *header = (const unsigned char *)host_inbox.data + used;
    uint32_t id = (uint32_t)header[1] << 24 | header[2] << 16 | header[3] << 8 | header[4];
    size_t size = (size_t)header[5] << 24 | header[6] << 16 | header[7] << 8 | header[8];
    if (host_inbox.length - used < HEADER_SIZE + size) break;
    if (!took_frame(header[0], id, (const char *)header + HEADER_SIZE, size))
      append(&passed_on, header, HEADER_SIZE + size);
    used += HEADER_SIZE + size;
  }
  consume(&host_inbox, used);
}

static void pass_on(void) {
  while (passed_on.length) {
    ssize_t written = write(to_supervisor, passed_on.data, passed_on.length);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) passed_on.length = 0;  /* the supervisor is gone: its end comes */
      return;
    }
    consume(&passed_on, written);
  }
}

static void said(Command *command, int fd, const char *chunk, size_t length) {
  /* What a command wrote on FD, to the host: within its budget. */
  if (command->budget >= 0) {
    size_t kept = (long long)length < command->budget ? length : (size_t)command->budget;
    command->dropped += length - kept;
    command->budget -= kept;
    length = kept;
  }
  if (length) frame(fd == 1 ? STDOUT_FRAME : STDERR_FRAME, command->id, chunk, length);
}

static void read_output(int descriptor, int all) {
  /* Read what is there on a command's output descriptor (all of it, or one chunk) and frame it.
     At its end it is closed; after its command ended (a background child's) it is dropped. */
  static char chunk[CHUNK];
  for (;;) {
    Reader *reader = &readers[descriptor];
    ssize_t length = read(descriptor, chunk, sizeof chunk);
    if (length < 0) {
      if (errno == EINTR) continue;
      return;  /* EAGAIN: nothing more now */
    }
    if (length == 0) {
      Command *command = reader->command;
      *reader = (Reader){NULL, 0};
      close(descriptor);
      if (--command->open_readers == 0 && command->ended) free(command);
      return;
    }
    if (!reader->command->ended) said(reader->command, reader->fd, chunk, length);
    if (!all) return;
  }
}

static void exited(pid_t pid, int status, Command *command) {
  for (int i = 0; i < spare_count; i++) {
    if (spares[i].pid != pid) continue;  /* a waiting shell killed before it got a command */
    close(spares[i].script);
    close(spares[i].out);
    close(spares[i].err);
    memmove(spares + i, spares + i + 1, (--spare_count - i) * sizeof *spares);
    return;
  }
  if (!command) {  /* a shell of `s` */
    appendf(&answers, "x %d %d %d\n", pid, WIFEXITED(status) ? WEXITSTATUS(status) : 0,
            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return;
  }
  /* A group with members left (background children) is the supervisor's to kill when the
     sandbox runs out of processes, as those of its own commands. */
  if (kill(-pid, 0) == 0) appendf(&answers, "l %d\n", pid);
  /* Whatever the shell wrote before it exited is in its pipes: said before its exit, stdout
     first (its pipe was made first, and has the lower descriptor). */
  for (int fd = 0; fd < table_size; fd++)
    if (readers[fd].command == command) read_output(fd, 1);
  command->ended = 1;
  int exit_code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
  long long now = oom_kills();
  int oom = now >= 0 && command->oom >= 0 && now > command->oom
            && (!command->overlapped || (exit_code == 137 && !command->timed_out));
  char payload[200];
  int length = snprintf(payload, sizeof payload,
                        "{\"exit_code\": %d, \"timed_out\": %s, \"dropped\": %lld, \"oom_killed\": %s}",
                        exit_code, command->timed_out ? "true" : "false", command->dropped,
                        oom ? "true" : "false");
  frame(EXIT_FRAME, command->id, payload, length);
  if (command->open_readers == 0) free(command);
}

static void make_fifos(char **fields, int count) {
  for (int i = 1; i < count; i++) mkfifo(fields[i], 0600);
  appendf(&answers, "d %s\n", fields[0]);
}

static void set_environment(char **fields, int count) {
  free_strings(environment);
  environment = copy_strings(NULL, fields, count);
}

static void handle(char *request, size_t length) {
  /* NUL-separated fields, the first the operation. */
  int count = 1;
  for (size_t i = 0; i < length; i++) count += request[i] == 0;
  char **fields = must(calloc(count + 1, sizeof *fields));
  fields[0] = request;
  for (size_t i = 0, field = 1; i < length; i++) if (request[i] == 0) fields[field++] = request + i + 1;
  const char *op = fields[0];
  char **rest = fields + 1;
  int rest_count = count - 1;
  if (!strcmp(op, "s")) spawn(rest, rest_count);
  else if (!strcmp(op, "m")) make_fifos(rest, rest_count);
  else if (!strcmp(op, "v")) set_environment(rest, rest_count);
  else if (!strcmp(op, "w")) { free_strings(waiting_shell); waiting_shell = copy_strings("sh", rest, rest_count); }
  else if (!strcmp(op, "n") && rest_count == 1) {
    supervisor_busy = atoi(rest[0]);
    if (supervisor_busy && commands_running()) {
      all_overlapped();
      append(&answers, "o\n", 2);
    }
  }
  free(fields);
}

static void answer(void) {
  size_t done = 0;
  while (done < answers.length) {
    ssize_t written = write(1, answers.data + done, answers.length - done);
    if (written < 0) {
      if (errno == EINTR) continue;
      _exit(1);
    }
    done += written;
  }
  answers.length = 0;
}

static void read_requests(void) {
  char chunk[CHUNK];
  ssize_t length = read(0, chunk, sizeof chunk);
  if (length < 0 && errno == EINTR) return;
  if (length <= 0) exit_now();
  append(&inbox, chunk, length);
  for (;;) {
    char *newline = memchr(inbox.data, '\n', inbox.length);
    if (!newline) return;
    size_t start = newline - inbox.data + 1, size = strtoul(inbox.data, NULL, 10);
    if (inbox.length < start + size) return;
    char *request = must(malloc(size + 1));
    memcpy(request, inbox.data + start, size);
    request[size] = 0;
    consume(&inbox, start + size);
    handle(request, size);
    free(request);
    answer();
  }
}

static void ignore(int signal) { (void)signal; }

/* As supervisor.py's _ask_for_short_slices: Linux's EEVDF scheduler lets a task that wakes preempt
   the one running on its CPU only when its own slice is the shorter, so with equal slices the
   forker, woken by a command's output or exit, waited for a new waiting shell (its start is half a
   millisecond of a core) to use up its slice. The shells get the default back at fork
   (SCHED_FLAG_RESET_ON_FORK); kernels before 6.12 ignore the slice. */
static void ask_for_short_slices(void) {
  struct {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
  } attr = {sizeof attr, 0 /* SCHED_OTHER */, 1 /* SCHED_FLAG_RESET_ON_FORK */, 0, 0, 100000 /* ns */, 0, 0};
  syscall(SYS_sched_setattr, 0, &attr, 0);  /* best effort */
}

int main(int argc, char **argv) {
  spares_wanted = argc > 1 ? atoi(argv[1]) : 2;
  if (spares_wanted < 0 || spares_wanted > MAX_SPARES) spares_wanted = 2;
  supervisor = getppid();
  /* The host's stream (3), the supervisor's frames for it (4), the host's frames (5) and the
     supervisor's end of those passed on (6), moved above 6 and closed on exec; /dev/null then
     takes 3, so that every pipe is above it (see start_shell). */
  if ((host = fcntl(3, F_DUPFD_CLOEXEC, 7)) < 0) fail("no host stream on descriptor 3");
  if ((frames_in = fcntl(4, F_DUPFD_CLOEXEC, 7)) < 0) fail("no frames on descriptor 4");
  if ((host_in = fcntl(5, F_DUPFD_CLOEXEC, 7)) < 0) fail("no host frames on descriptor 5");
  if ((to_supervisor = fcntl(6, F_DUPFD_CLOEXEC, 7)) < 0) fail("no way to the supervisor on descriptor 6");
  for (int fd = 3; fd <= 6; fd++) close(fd);
  if ((null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) fail("cannot open /dev/null");
  if ((oom_counter = open("/sys/fs/cgroup/memory.events", O_RDONLY | O_CLOEXEC)) < 0)
    oom_counter = open("/sys/fs/cgroup/memory/memory.oom_control", O_RDONLY | O_CLOEXEC);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", supervisor);
  if (access(path, R_OK) < 0) fail("cannot open the supervisor's /proc/PID/fd");
  int probe = syscall(SYS_pidfd_open, getpid(), 0);
  if (probe < 0) fail("no pidfd_open (Linux 5.3 or newer, allowed by seccomp)");
  close(probe);
  /* A write to a waiting shell that died fails (EPIPE) instead of killing the forker; a handled
     signal (unlike an ignored one) is the default again in the programs the shells run. */
  signal(SIGPIPE, ignore);
  ask_for_short_slices();
  fcntl(host, F_SETFL, O_NONBLOCK);
  fcntl(frames_in, F_SETFL, O_NONBLOCK);
  fcntl(host_in, F_SETFL, O_NONBLOCK);
  fcntl(to_supervisor, F_SETFL, O_NONBLOCK);
  grow_tables(64);
  append(&answers, "ready\n", 6);
  answer();
  struct pollfd *watched = NULL;
  int watched_capacity = 0;
  for (;;) {
    /* While the host is slow to take frames, commands' output and the supervisor's frames wait. */
    int backlog = outbox.length > HOST_BACKLOG, count = 0;
    if (watched_capacity < table_size + 5) {
      watched_capacity = table_size + 5;
      watched = must(realloc(watched, watched_capacity * sizeof *watched));
    }
    watched[count++] = (struct pollfd){0, POLLIN, 0};
    /* (A negative descriptor is skipped: a host that hung up would otherwise wake poll() at once.) */
    watched[count++] = (struct pollfd){outbox.length ? host : -1, POLLOUT, 0};
    watched[count++] = (struct pollfd){passed_on.length < HOST_BACKLOG ? host_in : -1, POLLIN, 0};
    watched[count++] = (struct pollfd){passed_on.length ? to_supervisor : -1, POLLOUT, 0};
    if (!backlog) watched[count++] = (struct pollfd){frames_in, POLLIN, 0};
    for (int fd = 0; fd < table_size; fd++)
      if (children[fd].pid || (readers[fd].command && !backlog)) watched[count++] = (struct pollfd){fd, POLLIN, 0};
    if (poll(watched, count, next_timeout()) < 0) {
      if (errno == EINTR) continue;
      fail("poll");
    }
    /* Requests first: a timeout's word comes before its kill, and so before the shell's exit. */
    if (watched[0].revents) read_requests();
    if (watched[2].revents) read_host();
    if (!backlog && watched[4].revents) relay_frames();
    /* Output before exits; each command's stdout before its stderr (the lower descriptor). */
    for (int i = 4; i < count; i++)
      if (watched[i].revents && readers[watched[i].fd].command) read_output(watched[i].fd, 0);
    for (int i = 4; i < count; i++) {
      int pidfd = watched[i].fd;
      if (!watched[i].revents || !children[pidfd].pid) continue;
      Child child = children[pidfd];
      children[pidfd] = (Child){0, NULL};
      close(pidfd);
      int status = 0;
      while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {}
      exited(child.pid, status, child.command);
    }
    time_out();
    write_host();  /* a command's last output and its EXIT, before the supervisor hears of its end */
    pass_on();
    answer();
    keep_spares();  /* while the command just handed out runs, so one waits for the next */
  }
}
