// The execution channel's far end for images without Python: the Node.js twin of supervisor.py.
//
// It speaks the same frame protocol with the same behaviour (see supervisor.py's docstring, the
// reference; tests/test_protocol.py runs one conformance suite against both). Node.js 18 or newer,
// built-in modules only. Where Node.js lacks what the Python one uses, it is made up for so that a
// command cannot tell which supervisor runs it:
//
// - Pipes. Node.js gives a child's stdio as UNIX socketpairs, and a socket cannot be opened through
//   /proc/self/fd: `echo x > /dev/stderr` would fail with ENXIO. The supervisor makes real pipes from
//   FIFOs instead: `mkfifo` (coreutils) creates a batch of them in a private directory ahead of
//   time; opening both ends of one and unlinking it leaves an anonymous pipe. Without `mkfifo` or a
//   writable directory the supervisor does not start, and the host falls back to `docker exec`.
// - Spawning. Node.js forks itself (Python's posix_spawn does not): a spawn costs a core 1-4 ms,
//   longer than a quick command takes. A small process started once, the forker (see FORKER),
//   forks the shells in a tenth of that, and runs the commonest commands itself; the shells are its
//   children. It is a static program beside this file (_guest/forker.c, built on the host: see
//   images/forker.py) that needs nothing from the image, or else, where the host could not build
//   it, a perl script (every Debian-based image has perl: perl-base is Essential). With neither
//   (said once on stderr) shells are spawned by two worker threads, so the main thread goes on
//   moving frames meanwhile. Either way two shells wait ready.
// - Signals. libuv resets every signal to its default in a child, but commands must ignore SIGXFSZ
//   (a write past the file size limit then fails with "File too large" instead of killing the
//   program). A waiting shell runs `trap '' XFSZ` first (a bare `trap` in a command lists it); a
//   command that gets a shell of its own runs as `trap '' XFSZ; exec /bin/sh -c ...`, so its shell
//   inherits SIGXFSZ ignored, as under the Python supervisor.
// - Process groups. `detached: true` starts each shell in a new session, as the leader of its own
//   process group; `process.kill(-pid, signal)` signals the group.
// - Terminals. Node.js has no pseudo-terminals: a terminal's program runs under util-linux's
//   `script -qfec CMD /dev/null` (bsdutils, in every Debian image), which makes one and copies
//   between it and its own standard streams. The program is started as `stty sane rows R cols C;
//   exec /bin/sh -c CMD`, which gives the pty its size and its echo back (script turns echo off
//   when its input is not a terminal). A resize runs `stty -F /dev/pts/N rows R cols C`, N read
//   from /proc: the kernel then sends SIGWINCH to the terminal's foreground process group.
// - NODE_OPTIONS. The host starts the supervisor with the container's NODE_OPTIONS moved aside (into
//   PYDANTIC_DEEP_NODE_OPTIONS) so that nothing of the user's changes how it runs; commands get it
//   back.
"use strict";
const childProcess = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const { EventEmitter } = require("events");
const { Worker, isMainThread, parentPort } = require("worker_threads");

const VERSION = 1;
const HEADER_SIZE = 9; // >BII: kind, request id, payload length
const RUN = 1, STDIN = 2, SIGNAL = 3;
const HELLO = 10, STDOUT = 11, STDERR = 12, EXIT = 13, ERROR = 14;
const TERMINAL = 20, TERMINAL_INPUT = 21, TERMINAL_RESIZE = 22, TERMINAL_CLOSE = 23;
const TERMINAL_FRAMES = [TERMINAL, TERMINAL_INPUT, TERMINAL_RESIZE, TERMINAL_CLOSE];
// A terminal's default program: an interactive shell, not a login one (a login shell's
// /etc/profile would replace the image's PATH).
const TERMINAL_SHELL = "if [ -x /bin/bash ]; then exec /bin/bash -i; else exec /bin/sh -i; fi";
const TERMINAL_TYPE = "xterm-256color";
const PORT_OPEN = 30, PORT_DATA = 31, PORT_END = 32, PORT_CLOSE = 33, PORT_ACK = 34; // 20s: terminals
const PORT_WINDOW = 1024 * 1024;
const WAITING_SHELL = 's=; while IFS= read -r l || [ -n "$l" ]; do s="$s$l\n"; done <&3; exec 3<&-; eval "$s"';
const IGNORING_XFSZ = "trap '' XFSZ; exec /bin/sh -c \"$1\" sh";
// A waiting shell ignores SIGXFSZ itself (`trap`): a second exec would cost every command.
const WAITING_SHELL_ARGS = ["-c", `trap '' XFSZ; ${WAITING_SHELL}`];
const SCRIPT_PIPE_LIMIT = 1024;
const OOM_COUNTERS = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"];
const SIGKILL = os.constants.signals.SIGKILL;
const PF_DYING = 0x4 | 0x400; // PF_EXITING | PF_SIGNALED: a dying process's flags (include/linux/sched.h)
const KILLED_BY_SIGKILL = 128 + SIGKILL;
const REAP_WAIT_MS = 1000, REAP_STEP_MS = 10;
const EARLY_REAP_ATTEMPTS = 2; // turns of the event loop to see a shell whose pipes closed become a zombie
// Waiting shells kept ready. A spawn takes longer than a quick command: with two spawner threads
// (on two cores) shells come about as fast as commands use them.
const SPARES = 2;
const FIFO_BATCH = 96, FIFO_LOW = 48; // FIFOs made per `mkfifo` run, and the stock that triggers one
const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
const PROCESS_LIMIT_MESSAGE = "the sandbox is at its process limit (pids_limit): its commands' processes use them all";

const environment = { ...process.env };
if ("PYDANTIC_DEEP_NODE_OPTIONS" in environment) {
  environment.NODE_OPTIONS = environment.PYDANTIC_DEEP_NODE_OPTIONS;
  delete environment.PYDANTIC_DEEP_NODE_OPTIONS;
}
// PYDANTIC_DEEP_FORKER=perl: the perl forker even where the program is; =off: Node.js spawns the
// shells itself, as where there is neither (the conformance suite runs the supervisor every way).
const FORKER_CHOICE = environment.PYDANTIC_DEEP_FORKER;
delete environment.PYDANTIC_DEEP_FORKER;
const FORKER_PROGRAM = path.join(__dirname, "forker");

function killGroup(group, signal = SIGKILL) {
  // False when the group has no process left.
  try {
    process.kill(-group, signal);
    return true;
  } catch (error) {
    if (error.code === "ESRCH") return false;
    if (error.code === "EPERM") return true; // a member that is not ours (setuid): the group lives
    throw error;
  }
}

// -- out of memory ------------------------------------------------------------------------------

function readOomKills(fd) {
  // The `oom_kill` count in the counter file (re-read from its start on every call).
  if (fd === null) return null;
  const buffer = Buffer.alloc(4096);
  const length = fs.readSync(fd, buffer, 0, buffer.length, 0);
  for (const line of buffer.subarray(0, length).toString("latin1").split("\n")) {
    const [name, value] = line.split(" ");
    if (name === "oom_kill") return Number(value);
  }
  return null;
}

function openOomCounter() {
  for (const file of OOM_COUNTERS) {
    let fd;
    try {
      fd = fs.openSync(file, O_RDONLY);
    } catch {
      continue;
    }
    if (readOomKills(fd) !== null) return fd;
    fs.closeSync(fd);
  }
  return null;
}

// -- pipes --------------------------------------------------------------------------------------

class Pipes {
  // A stock of FIFOs in a private directory; each becomes one anonymous pipe. `make(names, done)`
  // creates FIFOs (in the spawner thread).
  constructor(make) {
    this.make = make;
    this.directory = makePrivateDirectory();
    this.stock = [];
    this.made = 0;
    this.refilling = false;
    this.unused = { true: [], false: [] }; // pipes of spawns that failed, by whether the child reads
    const names = this.names(FIFO_BATCH);
    const made = childProcess.spawnSync("mkfifo", ["-m", "600", "--", ...names], { stdio: "ignore" });
    if (made.status !== 0) throw new Error(`mkfifo could not make FIFOs in ${this.directory}`);
    this.stock.push(...names);
  }

  names(count) {
    const names = [];
    for (let i = 0; i < count; i++) names.push(path.join(this.directory, String(this.made++)));
    return names;
  }

  refill() {
    if (this.refilling) return;
    this.refilling = true;
    const names = this.names(FIFO_BATCH);
    this.make(names, () => {
      this.refilling = false;
      for (const name of names) if (fs.existsSync(name)) this.stock.push(name);
    });
  }

  // One pipe: [read end, write end], as descriptors; the end a child gets blocks, the supervisor's
  // does not. Throws when there is no FIFO left to make it from.
  open(childReads) {
    if (this.unused[childReads].length) return this.unused[childReads].pop();
    if (this.stock.length < FIFO_LOW) this.refill();
    while (this.stock.length) {
      const name = this.stock.shift();
      const ends = [];
      try {
        ends.push(fs.openSync(name, O_RDONLY | O_NONBLOCK)); // with no writer yet, must not block
        if (!fs.fstatSync(ends[0]).isFIFO()) throw new Error("not a FIFO");
        ends.push(fs.openSync(name, O_WRONLY)); // a reader is there: returns at once, and blocks
        if (childReads) { // the child's end must block: open another, now that a writer is there
          const blocking = fs.openSync(name, O_RDONLY);
          fs.closeSync(ends[0]);
          ends[0] = blocking;
        }
        fs.unlinkSync(name);
        return ends;
      } catch {
        for (const fd of ends) fs.closeSync(fd);
        try { fs.unlinkSync(name); } catch { /* gone already */ }
      }
    }
    throw Object.assign(new Error("no FIFO left to make a pipe from (mkfifo failed)"), { code: "ENOFIFO" });
  }

  keep(ends, childReads) {
    // A pipe that no child got (its spawn failed), for the next one: at the process limit spawns
    // fail again and again, and making FIFOs needs a process too.
    if (ends) this.unused[childReads].push(ends);
  }

  remove() {
    fs.rmSync(this.directory, { recursive: true, force: true });
  }
}

function makePrivateDirectory() {
  // In /dev/shm (or /tmp), named by our pid; left-overs of supervisors that were killed are removed.
  for (const parent of ["/dev/shm", os.tmpdir(), os.homedir()]) {
    try {
      for (const entry of fs.readdirSync(parent)) {
        const match = /^\.pydantic-deep-supervisor-(\d+)-/.exec(entry);
        if (match && !fs.existsSync(`/proc/${match[1]}`)) {
          fs.rmSync(path.join(parent, entry), { recursive: true, force: true });
        }
      }
      return fs.mkdtempSync(path.join(parent, `.pydantic-deep-supervisor-${process.pid}-`));
    } catch {
      continue;
    }
  }
  throw new Error("no writable directory for FIFOs");
}

// -- shells and commands -------------------------------------------------------------------------

class Shell {
  // A spawned shell: its pid and the supervisor's ends of its pipes.
  constructor(pid, scriptFd, outputs, stdin) {
    this.pid = pid;
    this.scriptFd = scriptFd; // a waiting shell's: where its command goes
    this.outputs = outputs; // [[role, socket], ...]
    this.stdin = stdin;
    this.command = null;
    this.exited = false;
  }

  writeScript(script) {
    // The script fits the pipe's buffer: the write never blocks. False when the shell is gone.
    try {
      fs.writeSync(this.scriptFd, script);
      return true;
    } catch {
      return false;
    } finally {
      closeQuietly(this.scriptFd);
      this.scriptFd = null;
    }
  }

  closeParentEnds() {
    if (this.scriptFd !== null) closeQuietly(this.scriptFd);
    this.scriptFd = null;
    for (const [, socket] of this.outputs) socket.destroy();
    if (this.stdin !== null) this.stdin.destroy();
  }
}

function closeQuietly(fd) {
  try {
    fs.closeSync(fd);
  } catch { /* closed already */ }
}

class Command {
  // One running command: its shell, output budget and deadline.
  constructor(requestId, shell, maxOutput, oomKills) {
    this.requestId = requestId;
    this.shell = shell;
    this.pid = shell.pid;
    this.budget = maxOutput === undefined ? null : maxOutput;
    this.dropped = 0;
    this.timedOut = false;
    this.timer = null;
    this.oomKills = oomKills; // the container's OOM-kill count when the command started
    this.overlapped = false; // another command ran at some time during this one
    this.finished = false;
  }
}

class HostOut extends EventEmitter {
  // Where the supervisor's frames go: the host's stream (descriptor `fd`), or, once the forker runs
  // commands, the forker, which writes them there whole, between the frames of its own commands.
  // Until it says it is ready they are also kept, to go straight to the host should it fail.
  constructor(stream, fd) {
    super();
    this.stream = stream;
    this.fd = fd;
    this.forker = null;
    this.kept = null;
    stream.on("drain", () => this.emit("drain"));
    stream.on("error", (error) => this.emit("error", error));
  }

  through(forker) {
    this.forker = forker;
    this.kept = [];
    forker.on("drain", () => this.emit("drain"));
    forker.on("error", () => {}); // it died: the supervisor ends (Forker's `died`)
  }

  confirmed() {
    this.kept = null;
  }

  bypass() {
    const kept = this.kept || [];
    this.forker = this.kept = null;
    for (const data of kept) this.stream.write(data);
  }

  write(data) {
    if (this.forker === null) return this.stream.write(data);
    if (this.kept !== null) this.kept.push(data);
    return this.forker.write(data);
  }
}

class Supervisor {
  constructor(hostIn, hostOut) {
    // hostIn: the host's stream's descriptor (`fd`) and `open()`, which starts reading it.
    this.hostIn = null; // the stream the host's frames come from (see listen)
    this.hostOut = hostOut;
    this.commands = new Map(); // by request id
    this.terminals = new Map(); // by request id
    this.starting = new Map(); // request id: the STDIN and SIGNAL frames that came before its shell
    this.inbox = Buffer.alloc(0);
    this.spares = []; // waiting shells, ready for the next commands
    this.oomCounter = openOomCounter();
    this.leftoverGroups = new Set(); // process groups of finished commands that still had members
    this.spawner = startSpawner(hostIn, hostOut, {
      died: (reason) => this.forkerDied(reason),
      listen: (stream, endsHost) => this.listen(stream, endsHost),
      hostEnded: () => this.shutDown(),
      overlapped: () => this.overlapAll(),
      leftover: (group) => this.leftoverGroups.add(group),
    });
    if (this.hostIn === null) this.listen(hostIn.open(), true);
    this.pipes = new Pipes((names, done) => this.spawner.mkfifo(names, done));
    this.sparesComing = 0; // waiting shells being spawned
    this.waiting = []; // commands that wait for one
    this.ownCommands = 0; // running commands whose shell is not the forker's
    this.paused = false; // commands' output is not read while the host is slow to take frames
    this.ports = new Ports((kind, id, payload) => this.send(kind, id, payload));
    hostOut.on("drain", () => this.pauseOutput(false));
    hostOut.on("error", () => this.shutDown());
  }

  listen(stream, endsHost) {
    // Read the host's frames from `stream` from now on: the host's stream, or (`endsHost` false)
    // the forker program's pipe of those it passes on, whose end says nothing (it says `h`).
    this.hostIn = stream;
    stream.on("data", (chunk) => {
      if (this.hostIn === stream) this.readHost(chunk);
    });
    if (!endsHost) return;
    stream.on("end", () => this.shutDown());
    stream.on("error", () => this.shutDown());
  }

  send(kind, requestId, payload = Buffer.alloc(0)) {
    const header = Buffer.allocUnsafe(HEADER_SIZE);
    header.writeUInt8(kind, 0);
    header.writeUInt32BE(requestId, 1);
    header.writeUInt32BE(payload.length, 5);
    // What the host cannot take yet is queued, and commands' output is no longer read until it
    // drains: a slow host slows commands down instead of losing their output.
    if (!this.hostOut.write(Buffer.concat([header, payload])) && !this.paused) this.pauseOutput(true);
  }

  pauseOutput(paused) {
    this.paused = paused;
    for (const command of this.commands.values()) {
      for (const [, socket] of command.shell.outputs) paused ? socket.pause() : socket.resume();
    }
  }

  sendJson(kind, requestId, message) {
    this.send(kind, requestId, Buffer.from(JSON.stringify(message)));
  }

  serve() {
    this.keepSpare();
    this.sendJson(HELLO, 0, { version: VERSION, node: process.versions.node, pid: process.pid });
  }

  shutDown(status = 0) {
    // The host's stream closed: kill every command still running, and go.
    for (const command of this.commands.values()) killGroup(command.pid);
    for (const spare of this.spares) killGroup(spare.pid);
    for (const terminal of this.terminals.values()) terminal.kill();
    this.pipes.remove();
    process.exit(status);
  }

  forkerDied(reason) {
    // The shells' parent is gone (killed: by a command's `kill -9 $PPID`, say), and their exits
    // with it: end as a killed supervisor does, with no EXIT for what ran (the host fails it).
    process.stderr.write(`supervisor.js: ${reason}\n`);
    this.shutDown(1);
  }

  // -- frames from the host ----------------------------------------------------------------------

  readHost(chunk) {
    this.inbox = this.inbox.length ? Buffer.concat([this.inbox, chunk]) : chunk;
    while (this.inbox.length >= HEADER_SIZE) {
      const length = this.inbox.readUInt32BE(5);
      if (this.inbox.length < HEADER_SIZE + length) break;
      const kind = this.inbox.readUInt8(0), requestId = this.inbox.readUInt32BE(1);
      const payload = Buffer.from(this.inbox.subarray(HEADER_SIZE, HEADER_SIZE + length));
      this.inbox = this.inbox.subarray(HEADER_SIZE + length);
      this.handle(kind, requestId, payload);
    }
  }

  handle(kind, requestId, payload) {
    if (kind >= PORT_OPEN && kind <= PORT_ACK) {
      this.ports.handle(kind, requestId, payload);
      return;
    }
    const early = this.starting.get(requestId);
    if (early !== undefined && kind !== RUN) {
      early.push([kind, payload]);
      return;
    }
    const command = this.commands.get(requestId);
    if (kind === RUN) {
      this.start(requestId, payload);
    } else if (kind === STDIN && command !== undefined && command.shell.stdin !== null) {
      if (payload.length) command.shell.stdin.write(payload);
      else command.shell.stdin.end();
    } else if (kind === SIGNAL && command !== undefined) {
      killGroup(command.pid, JSON.parse(payload.toString()).signal);
    } else if (TERMINAL_FRAMES.includes(kind)) {
      this.handleTerminal(kind, requestId, payload);
    }
  }

  // -- terminals -----------------------------------------------------------------------------------

  handleTerminal(kind, requestId, payload) {
    const terminal = this.terminals.get(requestId);
    if (kind === TERMINAL) {
      this.openTerminal(requestId, payload);
    } else if (terminal === undefined) {
      return; // ended already: its EXIT is on its way
    } else if (kind === TERMINAL_INPUT) {
      terminal.input(payload);
    } else if (kind === TERMINAL_RESIZE) {
      const { cols, rows } = JSON.parse(payload.toString());
      if (windowSizeError(cols, rows) === null) terminal.resize(cols, rows);
    } else if (kind === TERMINAL_CLOSE) {
      terminal.kill();
    }
  }

  openTerminal(requestId, payload) {
    let spec, program;
    try {
      spec = JSON.parse(payload.toString());
      const sizeError = windowSizeError(spec.cols, spec.rows);
      if (sizeError !== null) throw new Error(sizeError);
      program = spec.command === null || spec.command === undefined ? TERMINAL_SHELL : spec.command;
      if (typeof program !== "string") throw new Error("the command is not a string");
      if (program.includes("\0")) throw new Error("it holds a NUL byte");
      if (/[\uD800-\uDFFF]/u.test(program)) throw new Error("it holds a lone surrogate");
    } catch (error) {
      this.sendJson(ERROR, requestId, { message: `cannot open the terminal: ${error.message}` });
      return;
    }
    // script runs its command with $SHELL -c: /bin/sh, and the program gets the user's SHELL back.
    const restoreShell = "SHELL" in environment ? `export SHELL=${shellQuote(environment.SHELL)}` : "unset SHELL";
    const wrapper = `stty sane rows ${spec.rows} cols ${spec.cols} 2>/dev/null; ${restoreShell}; ` +
      `exec /bin/sh -c ${shellQuote(program)}`;
    const env = { ...environment, SHELL: "/bin/sh", TERM: environment.TERM || TERMINAL_TYPE };
    let child;
    try {
      child = childProcess.spawn("script", ["-qfec", wrapper, "/dev/null"],
        { stdio: ["pipe", "pipe", "pipe"], detached: true, env });
    } catch (error) { // most failures come as an 'error' event below; some are thrown
      this.sendJson(ERROR, requestId, { message: `cannot open the terminal: ${error.message}` });
      return;
    }
    // Frames for it may come before it has started: its stdin holds their input until then.
    this.terminals.set(requestId, new Terminal(requestId, child));
    let opened = false;
    child.on("spawn", () => { opened = true; });
    child.on("error", (error) => {
      if (opened) return;
      this.terminals.delete(requestId);
      const reason = error.code === "ENOENT" ? "script (util-linux) is missing in this image"
        : error.code === "EAGAIN" ? "the sandbox is at its process limit (pids_limit)" : error.message;
      this.sendJson(ERROR, requestId, { message: `cannot open the terminal: ${reason}` });
    });
    // One stream, as from a pty: script's own complaints too.
    for (const stream of [child.stdout, child.stderr]) {
      stream.on("data", (chunk) => this.send(STDOUT, requestId, chunk));
    }
    child.stdin.on("error", () => {}); // script exited: its EXIT comes with 'close'
    child.on("close", (code, signal) => {
      if (!opened) return;
      this.terminals.delete(requestId);
      this.sendJson(EXIT, requestId, {
        exit_code: signal ? 128 + os.constants.signals[signal] : code, timed_out: false, dropped: 0, oom_killed: false,
      });
    });
  }

  // -- starting commands ---------------------------------------------------------------------------

  spawn(command, withStdin, done) {
    // `sh -c command` in a new session; with no command, a shell that waits for one on fd 3 (see
    // supervisor.py's _spawn). Then done(error, shell): EAGAIN at the process limit, say.
    const opened = [];
    let script, out, err, input;
    try {
      const pipe = (childReads) => {
        const ends = this.pipes.open(childReads);
        opened.push(...ends);
        return ends; // [read end, write end]
      };
      script = command === null ? pipe(true) : null;
      out = pipe(false);
      err = pipe(false);
      input = withStdin ? pipe(true) : null;
    } catch (error) {
      for (const fd of opened) closeQuietly(fd);
      done(error, null);
      return;
    }
    const stdio = [input ? input[0] : "ignore", out[1], err[1]];
    if (script) stdio.push(script[0]);
    const args = command === null ? WAITING_SHELL_ARGS : ["-c", IGNORING_XFSZ, "sh", command];
    this.spawner.spawn(args, stdio, (error, pid) => {
      if (error !== null) {
        for (const [ends, childReads] of [[script, true], [out, false], [err, false], [input, true]]) {
          this.pipes.keep(ends, childReads);
        }
        done(error, null);
        return;
      }
      for (const ends of [script, input]) if (ends) closeQuietly(ends[0]); // the child has them now
      closeQuietly(out[1]);
      closeQuietly(err[1]);
      const stdin = input ? new net.Socket({ fd: input[1], readable: false, writable: true }) : null;
      const readers = [["stdout", out[0]], ["stderr", err[0]]].map(([role, fd]) =>
        [role, new net.Socket({ fd, readable: true, writable: false })]);
      const shell = new Shell(pid, script ? script[1] : null, readers, stdin);
      let open = readers.length;
      for (const [role, socket] of readers) {
        socket.on("data", (chunk) => this.forward(shell.command, role, chunk));
        socket.on("end", () => --open || this.reapEarly(shell));
        socket.on("error", () => {});
        if (this.paused) socket.pause();
      }
      if (stdin !== null) stdin.on("error", () => stdin.destroy()); // the command closed its stdin
      // The spawner's word may come before the shell's last output has been read: two turns of the
      // event loop let that output come first, in the order it was written.
      this.spawner.onExit(pid, (code, signal) => setImmediate(() => setImmediate(
        () => this.exited(shell, code, signal))));
      done(null, shell);
    });
  }

  spawnThen(command, withStdin, done) {
    // spawn(); at the process limit, first kill the background jobs of finished commands, then try
    // again for a while: the killed processes free their slots once init has reaped them.
    let deadline = null;
    const attempt = () => this.spawn(command, withStdin, (error, shell) => {
      if (error === null || error.code !== "EAGAIN") {
        done(error, shell);
      } else if (deadline !== null) {
        if (Date.now() > deadline) done(error, null);
        else setTimeout(attempt, REAP_STEP_MS);
      } else if (!this.leftoverGroups.size) {
        done(error, null);
      } else {
        // A group whose processes all ended may have passed its number on to a running command.
        const running = new Set([...this.commands.values()].map((c) => c.pid));
        for (const spare of this.spares) running.add(spare.pid);
        for (const group of this.leftoverGroups) if (!running.has(group)) killGroup(group);
        this.leftoverGroups.clear();
        deadline = Date.now() + REAP_WAIT_MS;
        attempt();
      }
    });
    attempt();
  }

  start(requestId, payload) {
    // The host refuses such commands; should one come anyway, it fails alone.
    let spec, script;
    try {
      spec = JSON.parse(payload.toString());
      if (typeof spec.command !== "string") throw new Error("the command is not a string");
      if (/[\uD800-\uDFFF]/u.test(spec.command)) throw new Error("it holds a lone surrogate");
      script = Buffer.from(spec.command + "\n");
    } catch (error) {
      this.sendJson(ERROR, requestId, { message: `cannot run the command: ${error.message}` });
      return;
    }
    if (script.includes(0)) { // sh -c would cut it short, the waiting shell would drop the byte
      this.sendJson(ERROR, requestId, { message: "cannot run the command: it holds a NUL byte" });
      return;
    }
    this.starting.set(requestId, []);
    if (!spec.stdin && script.length <= SCRIPT_PIPE_LIMIT) {
      if (this.spawner.takesRuns) {
        this.runInForker(requestId, spec, script);
        return;
      }
      if (this.spares.length) {
        this.takeSpare(this.spares.shift(), requestId, spec, script);
        return;
      }
      if (this.waiting.length < this.sparesComing) { // one comes sooner than a shell spawned now would
        this.waiting.push([requestId, spec, script]);
        return;
      }
    }
    this.runInOwnShell(requestId, spec);
  }

  runInOwnShell(requestId, spec) {
    // `sh -c command`, in a shell started for it.
    this.spawnThen(spec.command, Boolean(spec.stdin), (error, shell) => {
      if (error === null) this.run(requestId, spec, shell);
      else this.failed(requestId, error);
    });
  }

  runInForker(requestId, spec, script) {
    // In a waiting shell of the forker's (see FORKER), which sends its output and EXIT to the host;
    // with none waiting (a burst of commands, the process limit), in a shell of its own.
    let shell = null;
    this.spawner.run(requestId, script, spec.max_output, {
      started: (error, pid) => {
        if (error === null) {
          shell = new Shell(pid, null, [], null);
          shell.inForker = true;
          this.run(requestId, spec, shell);
        } else if (error.code === "ENOSPARE") {
          this.runInOwnShell(requestId, spec);
        } else {
          this.failed(requestId, error);
        }
      },
      exited: (code, signal) => this.exited(shell, code, signal),
    });
  }

  takeSpare(spare, requestId, spec, script) {
    if (!spare.exited && spare.writeScript(script)) {
      this.run(requestId, spec, spare);
      return;
    }
    spare.closeParentEnds(); // the spare was killed (by a `pkill sh`, say): a shell of its own
    this.runInOwnShell(requestId, spec);
  }

  failed(requestId, error) {
    this.starting.delete(requestId);
    const reason = error.code === "EAGAIN" ? PROCESS_LIMIT_MESSAGE : error.message;
    this.sendJson(ERROR, requestId, { message: `cannot start /bin/sh: ${reason}` });
  }

  run(requestId, spec, shell) {
    const command = new Command(requestId, shell, spec.max_output, readOomKills(this.oomCounter));
    if (this.commands.size) {
      command.overlapped = true;
      this.overlapAll();
    }
    this.commands.set(requestId, command);
    shell.command = command;
    if (!shell.inForker && ++this.ownCommands === 1) this.spawner.busy(true);
    if (this.paused) for (const [, socket] of shell.outputs) socket.pause(); // a spare's were not
    const early = this.starting.get(requestId);
    this.starting.delete(requestId);
    for (const [kind, payload] of early) this.handle(kind, requestId, payload);
    if (spec.timeout) { // at most 2**31 - 1 ms (24.8 days) for a timer; the host allows 11.6
      command.timer = setTimeout(() => {
        command.timedOut = true;
        if (shell.inForker) this.spawner.timingOut(command.pid);
        killGroup(command.pid);
      }, Math.min(spec.timeout * 1000, 2 ** 31 - 1));
    }
    this.keepSpare(); // while this command runs, so it is up before the next one comes
  }

  keepSpare() {
    // Have a waiting shell ready (or coming) for the next command; the forker keeps its own.
    if (this.spawner.runsCommands) return;
    while (this.spares.length + this.sparesComing < SPARES) {
      this.sparesComing++;
      this.spawn(null, false, (error, shell) => {
        this.sparesComing--;
        const next = this.waiting.shift();
        if (error !== null) { // the process limit, say: commands then start their own shell
          if (next !== undefined) this.runInOwnShell(...next.slice(0, 2));
        } else if (next !== undefined) {
          this.takeSpare(shell, ...next);
        } else {
          this.spares.push(shell);
        }
      });
    }
  }

  // -- running commands ----------------------------------------------------------------------------

  forward(command, role, chunk) {
    if (command === null || command.finished) return; // a finished command's background children: discarded
    if (command.budget !== null) {
      const kept = chunk.subarray(0, Math.max(command.budget, 0));
      command.dropped += chunk.length - kept.length;
      command.budget -= kept.length;
      chunk = kept;
    }
    if (chunk.length) this.send(role === "stdout" ? STDOUT : STDERR, command.requestId, chunk);
  }

  reapEarly(shell, attempts = EARLY_REAP_ATTEMPTS) {
    // Both pipes closed: the shell has most likely exited. The spawner (a thread, or the forker)
    // reaps it and says so, but a thread may be busy spawning the next shell and the forker's word
    // takes a turn of the event loop: read the exit status of the zombie instead, from
    // /proc/<pid>/stat (field 52, in waitpid's form).
    if (shell.command === null || shell.exited) return;
    const fields = processStat(shell.pid); // from field 3, the state
    if (fields === null) { // reaped already: the spawner's word is on its way
      this.spawner.readNow();
      return;
    }
    if (fields[0] !== "Z" || fields.length < 50) {
      // Its descriptors close a moment before it is a zombie; or it closed them and runs on.
      if (attempts > 1) setImmediate(() => this.reapEarly(shell, attempts - 1));
      return;
    }
    if (!this.spawner.mayReapEarly()) return;
    const status = Number(fields[49]);
    if (status & 0x7f) this.exited(shell, null, status & 0x7f);
    else this.exited(shell, (status >> 8) & 0xff, null);
  }

  exited(shell, code, signal) {
    // The shell exited with `code`, or was killed by signal number `signal`.
    if (shell.exited) return; // said already, by reapEarly()
    shell.exited = true;
    const command = shell.command;
    if (command === null) { // a spare that died before it got a command
      if (this.spares.includes(shell)) {
        this.spares.splice(this.spares.indexOf(shell), 1);
        shell.closeParentEnds();
      }
      return;
    }
    // Whatever the shell wrote before it exited is in its pipes now: read it before EXIT.
    const buffer = Buffer.allocUnsafe(65536);
    for (const [role, socket] of shell.outputs) {
      while (socket.read() !== null); // what the stream holds (paused), through its 'data' handler
      const fd = socket._handle ? socket._handle.fd : -1;
      while (fd >= 0) {
        let length;
        try {
          length = fs.readSync(fd, buffer, 0, buffer.length, null);
        } catch {
          break; // EAGAIN: empty, and still open in a background child
        }
        if (length === 0) {
          socket.destroy();
          break;
        }
        this.forward(command, role, Buffer.from(buffer.subarray(0, length)));
      }
      socket.resume(); // from now on read and discarded, so that background children never block
    }
    if (shell.stdin !== null) shell.stdin.destroy();
    clearTimeout(command.timer);
    command.finished = true;
    this.commands.delete(command.requestId);
    const exitCode = signal !== null ? 128 + signal : code;
    // Signal 0 only asks whether a group still has members.
    for (const group of this.leftoverGroups) if (!killGroup(group, 0)) this.leftoverGroups.delete(group);
    if (killGroup(command.pid, 0)) this.leftoverGroups.add(command.pid);
    if (shell.inForker) return; // its output and EXIT went to the host from the forker
    if (--this.ownCommands === 0) this.spawner.busy(false);
    this.sendJson(EXIT, command.requestId, {
      exit_code: exitCode, timed_out: command.timedOut, dropped: command.dropped,
      oom_killed: this.oomKilled(command, exitCode),
    });
  }

  overlapAll() {
    // Another command runs beside every running one (for the OOM report: see oomKilled).
    for (const command of this.commands.values()) command.overlapped = true;
  }

  oomKilled(command, exitCode) {
    // Whether the OOM killer struck this command (see supervisor.py's docstring).
    const now = readOomKills(this.oomCounter);
    if (now === null || command.oomKills === null || now <= command.oomKills) return false;
    return !command.overlapped || (exitCode === KILLED_BY_SIGKILL && !command.timedOut);
  }
}

class Terminal {
  // A terminal's `script` process, and what it takes to resize and close it.
  constructor(requestId, child) {
    this.requestId = requestId;
    this.child = child;
    this.device = null; // /dev/pts/N, once known
    this.resizing = false; // an stty runs: the next size waits for it, so sizes apply in order
    this.nextSize = null;
    this.held = []; // input that came during a resize: typed after it, as it was sent
  }

  input(data) {
    if (this.resizing) this.held.push(data);
    else this.child.stdin.write(data);
  }

  session() {
    // The pid of the program script started (it leads a session of its own), or null.
    const script = this.child.pid;
    for (const [pid, fields] of processes()) if (Number(fields[1]) === script && Number(fields[3]) === pid) return pid;
    return null;
  }

  resize(cols, rows) {
    this.nextSize = [cols, rows];
    if (this.resizing) return;
    if (this.device === null) {
      const leader = this.session();
      const stat = leader === null ? null : processStat(leader);
      if (stat === null) return; // not started yet, or ended: nothing to resize
      const ttyNr = Number(stat[4]); // major in bits 8-15, minor in bits 0-7 and 20-31
      const major = (ttyNr >> 8) & 0xfff, minor = (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00);
      if (major < 136 || major > 143) return; // not a Unix 98 pty
      this.device = `/dev/pts/${(major - 136) * 256 + minor}`;
    }
    const [nextCols, nextRows] = this.nextSize;
    this.nextSize = null;
    this.resizing = true;
    const stty = childProcess.spawn("stty", ["-F", this.device, "rows", String(nextRows), "cols", String(nextCols)],
      { stdio: "ignore" });
    const done = () => {
      this.resizing = false;
      if (this.nextSize !== null) {
        this.resize(...this.nextSize);
        return;
      }
      for (const data of this.held.splice(0)) this.child.stdin.write(data);
    };
    stty.on("error", done);
    stty.on("close", done);
  }

  kill() {
    // Every process of the terminal's session (jobs in process groups of their own too), and script.
    const leader = this.session();
    if (leader !== null) {
      for (const [pid, fields] of processes()) if (Number(fields[3]) === leader) killProcess(pid);
      killProcess(leader);
    }
    killProcess(this.child.pid);
  }
}

function processStat(pid) {
  // /proc/PID/stat from field 3 (the state) on, split; null when the process is gone. One read of
  // at most a few hundred bytes: readFileSync() takes a hundred times longer on a /proc file
  // (its size is 0), and a shell's exit waits for this.
  let fd;
  try {
    fd = fs.openSync(`/proc/${pid}/stat`, O_RDONLY);
  } catch {
    return null;
  }
  try {
    const length = fs.readSync(fd, statBuffer, 0, statBuffer.length, 0);
    const stat = statBuffer.toString("latin1", 0, length);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null; // ESRCH: gone between the open and the read
  } finally {
    fs.closeSync(fd);
  }
}
const statBuffer = Buffer.allocUnsafe(4096);

function* processes() {
  // [pid, its stat fields from the state on] for every process.
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = processStat(entry);
    if (fields !== null) yield [Number(entry), fields];
  }
}

function killProcess(pid) {
  try {
    process.kill(pid, SIGKILL);
  } catch { /* gone already */ }
}

function windowSizeError(cols, rows) {
  // Why a terminal cannot have this size, or null.
  const valid = (n) => Number.isInteger(n) && n > 0 && n < 65536;
  return valid(cols) && valid(rows) ? null
    : `the size must be whole numbers from 1 to 65535, not cols=${JSON.stringify(cols)}, rows=${JSON.stringify(rows)}`;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

// -- ports ------------------------------------------------------------------------------------------

class Ports {
  // Connections to TCP ports on the container's loopback, each carried to the host as a stream of
  // PORT_* frames (see supervisor.py's docstring), with the same window of unacknowledged bytes.
  constructor(send) {
    this.send = send;
    this.streams = new Map(); // by stream id
  }

  handle(kind, id, payload) {
    if (kind === PORT_OPEN) {
      this.open(id, payload);
      return;
    }
    const stream = this.streams.get(id);
    if (stream === undefined) return; // forgotten already (closed): the host learns it from our CLOSE
    if (kind === PORT_DATA) {
      if (stream.connected) this.write(stream, payload);
      else stream.early.push(payload); // until the connection is up (at most a window of it)
    } else if (kind === PORT_ACK) {
      stream.credit += payload.readUInt32BE(0);
      if (stream.credit > 0) stream.socket.resume();
    } else if (kind === PORT_END) {
      stream.gotEnd = true;
      if (stream.connected) stream.socket.end(); // after what was written; 'finish' follows
    } else if (kind === PORT_CLOSE) {
      this.forget(stream);
    }
  }

  write(stream, payload) {
    stream.socket.write(payload, () => {
      if (this.streams.get(stream.id) === stream) this.send(PORT_ACK, stream.id, ack(payload.length));
    });
  }

  open(id, payload) {
    let port;
    try {
      port = Number(JSON.parse(payload.toString()).port);
      if (!Number.isInteger(port) || port <= 0 || port >= 65536) throw new Error(`port ${port} is out of range`);
    } catch (error) {
      this.closeWith(id, `cannot open the stream: ${error.message}`);
      return;
    }
    const stream = { id, port, socket: null, credit: PORT_WINDOW, connected: false, early: [], gotEnd: false,
      sentEnd: false, shut: false };
    this.streams.set(id, stream);
    this.connect(stream, ["127.0.0.1", "::1"], null); // IPv4, then IPv6 (Vite's default), as supervisor.py
  }

  connect(stream, addresses, firstError) {
    const socket = net.connect({ port: stream.port, host: addresses[0], allowHalfOpen: true, noDelay: true });
    stream.socket = socket;
    socket.on("connect", () => {
      stream.connected = true;
      for (const chunk of stream.early) this.write(stream, chunk);
      stream.early = [];
      if (stream.gotEnd) socket.end();
    });
    socket.on("data", (chunk) => {
      if (chunk.length > stream.credit) { // the socket read past the window: the rest waits in its buffer
        socket.pause();
        socket.unshift(chunk.subarray(stream.credit));
        chunk = chunk.subarray(0, stream.credit);
      }
      if (chunk.length) {
        stream.credit -= chunk.length;
        this.send(PORT_DATA, stream.id, chunk);
      }
      if (stream.credit <= 0) socket.pause();
    });
    socket.on("end", () => {
      stream.sentEnd = true;
      this.send(PORT_END, stream.id);
      this.forgetIfDone(stream);
    });
    socket.on("finish", () => {
      stream.shut = true;
      this.forgetIfDone(stream);
    });
    socket.on("error", (error) => {
      if (this.streams.get(stream.id) !== stream || stream.socket !== socket) return;
      if (!stream.connected && addresses.length > 1) {
        this.connect(stream, addresses.slice(1), firstError || error);
        return;
      }
      this.closeWith(stream.id, stream.connected ? `the connection to the sandbox's port broke (${error.message})`
        : `nothing listens on port ${stream.port} in the sandbox (${(firstError || error).code || error.message})`);
      this.forget(stream);
    });
  }

  closeWith(id, message) {
    this.send(PORT_CLOSE, id, Buffer.from(JSON.stringify({ error: message })));
  }

  forgetIfDone(stream) {
    if (stream.sentEnd && stream.shut) this.forget(stream);
  }

  forget(stream) {
    if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
    stream.socket.destroy();
  }
}

function ack(count) {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(count, 0);
  return payload;
}

class Spawner {
  // The main thread's side of the spawner threads (see spawnerThread below), used in turn.
  constructor() {
    this.replies = new Map(); // request number: (error, pid) callback
    this.exits = new Map(); // pid: (code, signal) callback
    this.next = 0;
    this.workers = Array.from({ length: SPARES }, () => this.startWorker());
  }

  startWorker() {
    const worker = new Worker(__filename);
    worker.unref(); // the host's stream keeps the supervisor alive, not these threads
    worker.on("message", (message) => {
      if (message.exit) {
        const onExit = this.exits.get(message.pid);
        this.exits.delete(message.pid);
        if (onExit) onExit(message.code, message.signal ? os.constants.signals[message.signal] : null);
        return;
      }
      const reply = this.replies.get(message.id);
      this.replies.delete(message.id);
      const error = message.error ? Object.assign(new Error(message.error), { code: message.code }) : null;
      reply(error, message.pid);
    });
    worker.on("error", (error) => {
      process.stderr.write(`supervisor.js: a spawner thread failed: ${error.stack}\n`);
      process.exit(1);
    });
    return worker;
  }

  request(message, reply) {
    const id = this.next++;
    this.replies.set(id, reply);
    this.workers[id % this.workers.length].postMessage({ id, ...message });
  }

  spawn(args, stdio, reply) {
    this.request({ op: "spawn", args, stdio }, reply);
  }

  mkfifo(names, reply) {
    this.request({ op: "mkfifo", names }, reply);
  }

  readNow() {
    // Its threads' messages come through the event loop only.
  }

  mayReapEarly() {
    // A thread may be busy spawning when a shell exits: its status is read from /proc at once.
    return true;
  }

  get runsCommands() {
    return false; // the supervisor's own waiting shells run them
  }

  get takesRuns() {
    return false;
  }

  busy() {
    // It runs no commands.
  }

  onExit(pid, callback) {
    this.exits.set(pid, callback);
  }
}

// -- the forker ---------------------------------------------------------------------------------------

// A fork of Node.js copies its page tables (about 40 MB of memory mapped): 1-4 ms of one core per
// shell, more than a quick command takes, in whichever thread forks. A small process started once,
// the forker, forks the shells instead, in a tenth of a millisecond, and waits for them. The
// shells are its children: `$PPID` in a command is the forker's pid, and killing it ends the
// supervisor, as killing the supervisor itself does. It comes in two forms:
// - a static C program (_guest/forker.c, placed beside this file when the image is prepared: see
//   images/forker.py) that needs nothing from the image and forks with vfork(). It reads the host's
//   frames itself (its descriptor 5) and runs the commonest command (no stdin, a script of at most
//   SCRIPT_PIPE_LIMIT bytes) from end to end, its timeout and SIGNALs included, and passes every
//   other frame on to the supervisor unchanged (its descriptor 6): such a command costs Node.js
//   nothing. `echo hi` costs the sandbox 1.1 ms of CPU in all (the Python supervisor's: 1.25 ms).
// - this perl script, where the program is not (perl-base is Essential in Debian, so in every
//   Debian-based image). The supervisor reads the host's frames and hands the commonest command to
//   it (`r`). A perl process of about 7 MB cannot vfork: after each fork() the pages it writes fault
//   and are copied again (some 110 a command), and the child frees them all when it execs the
//   shell: `echo hi` costs the sandbox 2.5 ms of CPU, 0.5 ms of it in Node.js.
// Either keeps two waiting shells of its own on pipes it made, hands a command's script to one, and
// writes the command's output (cut to its budget) and EXIT to the host's stream, which it shares
// with the supervisor (its descriptor 3); the supervisor's own frames reach the host through it too
// (its descriptor 4), a whole frame at a time, so that the two never interleave. Requests come on
// its stdin as `LENGTH\n` then LENGTH bytes of NUL-separated fields; answers go out on its stdout
// as lines. The supervisor's pipes reach the child through /proc/<supervisor>/fd/N (they are FIFOs:
// pipes, which can be opened there, unlike sockets). It learns of its children's exits through
// pidfds (Linux 5.3), which select() can wait on with no race against SIGCHLD. It exits when its
// stdin or the supervisor's frames end (killing the commands it runs).
//   v KEY=VALUE ...                 the commands' environment (first, once)
//   w ARG ...                       `sh ARG ...` is a waiting shell: keep SPARES of them (once)
//   s ID FD0 FD1 FD2 FD3 ARG ...    `sh ARG ...` in a new session, with the supervisor's descriptors
//                                   FD0-3 as its 0-3 ("" for none: /dev/null for 0, else closed)
//                                   -> `p ID PID`, or `e ID ERRNO-NAME message`
//   r ID REQUEST BUDGET SCRIPT      (perl) the host's command REQUEST: SCRIPT to a waiting shell, its
//                                   output cut to BUDGET bytes ("" for no limit), its frames to the
//                                   host -> `p ID PID`, or `e ID ENOSPARE ...` when none waits
//   t PID                           (perl) the command of `r` in PID is about to be killed for its
//                                   timeout
//   n 1|0                           whether commands of the supervisor's own run (they overlap the
//                                   forker's, for the OOM report; the program answers `o` if any)
//   m ID PATH ...                   FIFOs at these paths (mode 0600) -> `d ID`
//   (unasked)                       `x PID CODE SIGNAL`: a child exited (SIGNAL 0) or was killed (a
//                                   command of `r`: once its EXIT went to the host)
//   (unasked, the program)          `o`: a command of its own overlaps the supervisor's; `l PID`: a
//                                   command of its own ended, its process group PID still with
//                                   members; `h`: the host's stream ended (it killed its commands)
// At start it answers `ready`, or `fail REASON` and exits.
const FORKER = String.raw`
use strict;
use POSIX ();
use Fcntl ();
use constant SPARES => ${SPARES};
$0 = "pydantic-deep-forker";
my $supervisor = getppid;
sub fail { syswrite STDOUT, "fail $_[0]\n"; exit 1 }
# The host's stream (3) and the supervisor's frames for it (4), as copies that perl opens
# close-on-exec, as it opens every file: a child keeps only the descriptors it dup2()s into 0-3.
# Then /dev/null takes descriptor 3, so that every pipe is above it (see start_shell).
open(my $host, ">&", 3) or fail("no host stream on descriptor 3: $!");
open(my $frames_in, "<&", 4) or fail("no frames on descriptor 4: $!");
POSIX::close($_) for 3, 4;
open(my $null, "<", "/dev/null") or fail("cannot open /dev/null: $!");
my $oom_counter;  # the container's count of OOM kills
for my $file ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control") {
  open($oom_counter, "<", $file) and last;
}
opendir(my $fds, "/proc/$supervisor/fd") or fail("cannot open the supervisor's /proc/$supervisor/fd: $!");
closedir $fds;
my $probe = syscall(434, $$ + 0, 0);  # pidfd_open(2)
$probe >= 0 or fail("no pidfd_open (Linux 5.3 or newer, allowed by seccomp): $!");
POSIX::close($probe);
# A write to a waiting shell that died fails (EPIPE) instead of killing the forker; a handled
# signal (unlike an ignored one) is the default again in the programs the shells run.
$SIG{PIPE} = sub {};
# (Once nothing can fail: the supervisor writes to the host's stream itself if the forker fails.)
fcntl($_, Fcntl::F_SETFL(), Fcntl::O_NONBLOCK()) for $host, $frames_in;

use constant { STDOUT_FRAME => 11, STDERR_FRAME => 12, EXIT_FRAME => 13, HOST_BACKLOG => 1 << 20 };
my %children;  # pid by pidfd
my $watched = "";  # select()'s bit vector: stdin, the pidfds, commands' output, the supervisor's frames
vec($watched, 0, 1) = 1;
vec($watched, fileno $frames_in, 1) = 1;
my @waiting_shell;  # its arguments (w)
my @spares;  # waiting shells: {pid, script, out, err}
my %spare_pids;
my %commands;  # the commands of r, by pid: {id, budget, dropped, timed_out, overlapped, oom, ended}
my %readers;  # commands' output, by descriptor: [command, fd (1 or 2), handle]
my $supervisor_busy = 0;  # commands of the supervisor's own run (n)
my $outbox = "";  # frames for the host, not written yet
my $frames = "";  # what the supervisor sent for the host, up to its last whole frame
my $host_gone = 0;

sub oom_kills {
  return undef unless $oom_counter;
  sysseek $oom_counter, 0, 0;
  sysread $oom_counter, my $text, 4096;
  return $text =~ /^oom_kill (\d+)$/m ? $1 : undef;
}

sub frame {
  my ($kind, $id, $payload) = @_;
  $outbox .= pack("CNN", $kind, $id, length $payload) . $payload unless $host_gone;
}

sub write_host {
  while (length $outbox) {
    my $written = syswrite $host, $outbox;
    if (!defined $written) {
      next if $!{EINTR};
      return if $!{EAGAIN};
      ($host_gone, $outbox) = (1, "");  # closed: the supervisor sees its end too, and ends
      return;
    }
    substr($outbox, 0, $written) = "";
  }
}

sub relay_frames {
  # What the supervisor wrote for the host, passed on a whole frame at a time (never inside one
  # of this process's own).
  my $length = sysread $frames_in, $frames, 65536, length $frames;
  return if !defined $length;
  exit_now() if $length == 0;  # the supervisor ended
  my $whole = 0;
  while (length($frames) - $whole >= 9) {
    my $size = 9 + unpack("N", substr($frames, $whole + 5, 4));
    last if length($frames) - $whole < $size;
    $whole += $size;
  }
  my $whole_frames = substr($frames, 0, $whole, "");
  $outbox .= $whole_frames unless $host_gone;
}

sub failure {
  my $request = shift;
  my $errno = $! + 0;
  my $text = "$!";
  my ($name) = sort grep { $!{$_} } keys %!;  # sorted: EAGAIN, not its alias EWOULDBLOCK
  return "e $request " . ($name // "E$errno") . " $text\n";
}

sub start_shell {
  # "sh ARGS" in a new session with SOURCES as its 0-3 (undef for 3: closed): its pid, watched, or
  # undef ($! says why).
  my ($sources, @args) = @_;
  my $pid = fork;
  if (defined $pid && $pid == 0) {
    # Every source is above 2, and the one for 3 above the others: no dup2 undoes an earlier one.
    # (Its signal mask is empty and no signal is ignored: Node.js started the forker so.)
    POSIX::setsid();
    POSIX::dup2(fileno $sources->[$_], $_) for 0 .. 2;
    if (defined $sources->[3]) { POSIX::dup2(fileno $sources->[3], 3) } else { POSIX::close(3) }
    exec { "/bin/sh" } "sh", @args;
    syswrite STDERR, "sh: cannot run /bin/sh: $!\n";
    POSIX::_exit(127);
  }
  return undef if !defined $pid;
  my $pidfd = syscall(434, $pid, 0);
  if ($pidfd < 0) {  # out of descriptors: a child we could not wait for is no child
    my $errno = $!;
    kill 9, $pid;
    waitpid $pid, 0;
    $! = $errno;
    return undef;
  }
  $children{$pidfd} = $pid;
  vec($watched, $pidfd, 1) = 1;
  return $pid;
}

sub spawn {
  my ($request, @fields) = @_;
  my @wanted = splice @fields, 0, 4;
  my @sources;  # handles, closed when they go out of scope
  for my $target (0 .. 3) {
    if ($wanted[$target] eq "") {
      push @sources, $target == 0 ? $null : undef;
      next;
    }
    my $mode = $target == 1 || $target == 2 ? POSIX::O_WRONLY() : POSIX::O_RDONLY();
    sysopen(my $source, "/proc/$supervisor/fd/$wanted[$target]", $mode) or return failure($request);
    push @sources, $source;
  }
  my $pid = start_shell(\@sources, @fields);
  return defined $pid ? "p $request $pid\n" : failure($request);
}

sub keep_spares {
  # Waiting shells up to SPARES; at the process limit fewer (commands of r then get none, and the
  # supervisor starts their shells).
  while (@waiting_shell && @spares < SPARES) {
    my ($script, $script_end, $out, $out_end, $err, $err_end);
    pipe($script_end, $script) && pipe($out, $out_end) && pipe($err, $err_end) or return;
    my $pid = start_shell([$null, $out_end, $err_end, $script_end], @waiting_shell);
    return if !defined $pid;
    fcntl($_, Fcntl::F_SETFL(), Fcntl::O_NONBLOCK()) for $out, $err;
    push @spares, { pid => $pid, script => $script, out => $out, err => $err };
    $spare_pids{$pid} = 1;
  }
}

sub run {
  my ($request, $id, $budget, $script) = @_;
  while (my $spare = shift @spares) {
    delete $spare_pids{$spare->{pid}};
    my $written = syswrite $spare->{script}, $script;  # at most SCRIPT_PIPE_LIMIT: never blocks
    close $spare->{script};
    next unless defined $written;  # the shell died (a pkill sh): its exit comes, and is dropped
    my $overlapped = %commands || $supervisor_busy ? 1 : 0;
    $_->{overlapped} = 1 for values %commands;
    my $command = { id => $id, budget => $budget eq "" ? undef : $budget, dropped => 0, timed_out => 0,
                    overlapped => $overlapped, oom => oom_kills() };
    $commands{$spare->{pid}} = $command;
    for my $fd (1, 2) {
      my $handle = $spare->{$fd == 1 ? "out" : "err"};
      $readers{fileno $handle} = [$command, $fd, $handle];
      vec($watched, fileno $handle, 1) = 1;
    }
    return "p $request $spare->{pid}\n";
  }
  return "e $request ENOSPARE no waiting shell\n";
}

sub said {
  # What a command wrote on FD, to the host: within its budget.
  my ($command, $fd, $chunk) = @_;
  if (defined $command->{budget}) {
    my $kept = substr $chunk, 0, ($command->{budget} > 0 ? $command->{budget} : 0);
    $command->{dropped} += length($chunk) - length($kept);
    $command->{budget} -= length $kept;
    $chunk = $kept;
  }
  frame($fd == 1 ? STDOUT_FRAME : STDERR_FRAME, $command->{id}, $chunk) if length $chunk;
}

sub read_output {
  # Read what is there on a command's output descriptor (all of it, or one chunk) and frame it for
  # the host. At the end of the stream it is closed; after its command ended (a background
  # child's) it is dropped.
  my ($descriptor, $all) = @_;
  my ($command, $fd, $handle) = @{$readers{$descriptor}};
  for (;;) {
    my $length = sysread $handle, my $chunk, 65536;
    if (!defined $length) {
      next if $!{EINTR};
      return;  # EAGAIN: nothing more now
    }
    if ($length == 0) {
      vec($watched, $descriptor, 1) = 0;
      delete $readers{$descriptor};
      close $handle;
      return;
    }
    said($command, $fd, $chunk) unless $command->{ended};
    return unless $all;
  }
}

sub output_order {
  # Commands' output descriptors, each command's stdout before its stderr (its stdout pipe was made
  # first): select() does not say which was written first, and a hash's order is random, so a
  # command's budget would go to its stderr first now and then.
  return sort { $a <=> $b } keys %readers;
}

sub exited {
  my ($pid, $status) = @_;
  if (delete $spare_pids{$pid}) {  # a waiting shell killed before it got a command
    @spares = grep { $_->{pid} != $pid } @spares;
    return "";
  }
  my $said = "x $pid " . ($status >> 8) . " " . ($status & 127) . "\n";
  my $command = delete $commands{$pid};
  return $said unless $command;
  # Whatever the shell wrote before it exited is in its pipes: said before its exit.
  for my $descriptor (grep { $readers{$_}[0] == $command } output_order()) {
    read_output($descriptor, 1);
  }
  $command->{ended} = 1;  # from now on its pipes are read and dropped, so background children never block
  my $exit_code = $status & 127 ? 128 + ($status & 127) : $status >> 8;
  # As the supervisors decide it (see supervisor.py's docstring).
  my $now = oom_kills();
  my $oom = defined $now && defined $command->{oom} && $now > $command->{oom}
    && (!$command->{overlapped} || ($exit_code == 137 && !$command->{timed_out}));
  frame(EXIT_FRAME, $command->{id}, sprintf('{"exit_code": %d, "timed_out": %s, "dropped": %d, "oom_killed": %s}',
    $exit_code, $command->{timed_out} ? "true" : "false", $command->{dropped}, $oom ? "true" : "false"));
  return $said;
}

sub handle {
  my ($op, @fields) = @_;
  if ($op eq "s") { return spawn(@fields) }
  if ($op eq "r") { return run(@fields) }
  if ($op eq "m") {
    my $request = shift @fields;
    POSIX::mkfifo($_, 0600) for @fields;
    return "d $request\n";
  }
  if ($op eq "v") { %ENV = map { split /=/, $_, 2 } @fields }
  if ($op eq "w") { @waiting_shell = @fields }
  if ($op eq "t" && $commands{$fields[0]}) { $commands{$fields[0]}{timed_out} = 1 }  # before its kill
  if ($op eq "n") {
    $supervisor_busy = $fields[0];
    if ($supervisor_busy) { $_->{overlapped} = 1 for values %commands }
  }
  return "";
}

sub answer {
  my $answers = shift;
  while (length $answers) {
    my $written = syswrite STDOUT, $answers;
    if (!defined $written) {
      next if $!{EINTR};
      die "pydantic-deep-forker: write: $!\n";
    }
    substr($answers, 0, $written) = "";
  }
}

answer("ready\n");
my $inbox = "";
for (;;) {
  # While the host is slow to take frames, commands' output and the supervisor's frames wait.
  my $backlog = length($outbox) > HOST_BACKLOG;
  vec($watched, $_, 1) = !$backlog for keys %readers, fileno $frames_in;
  my $ready = $watched;
  my $writable = "";
  vec($writable, fileno $host, 1) = 1 if length $outbox;
  if (select($ready, $writable, undef, undef) < 0) {
    next if $!{EINTR};
    die "pydantic-deep-forker: select: $!\n";
  }
  # Requests first: a timeout's word comes before its kill, and so before the shell's exit.
  if (vec($ready, 0, 1)) {
    exit_now() unless sysread STDIN, $inbox, 65536, length $inbox;
    while ($inbox =~ /\A(\d+)\n/) {
      my ($length, $start) = ($1, length($1) + 1);
      last if length($inbox) < $start + $length;
      my $request = substr $inbox, $start, $length;
      substr($inbox, 0, $start + $length) = "";
      answer(handle(split /\0/, $request, -1));
    }
  }
  relay_frames() if vec($ready, fileno $frames_in, 1);
  for my $descriptor (output_order()) {
    read_output($descriptor, 0) if vec($ready, $descriptor, 1) && $readers{$descriptor};
  }
  my $answers = "";
  for my $pidfd (keys %children) {
    next unless vec($ready, $pidfd, 1);
    my $pid = delete $children{$pidfd};
    vec($watched, $pidfd, 1) = 0;
    POSIX::close($pidfd);
    waitpid $pid, 0;
    $answers .= exited($pid, $?);
  }
  write_host();  # a command's last output and its EXIT, before the supervisor hears of its end
  answer($answers);
  keep_spares();  # while the command just handed out runs, so one waits for the next
}

sub exit_now {
  # The supervisor ended (its requests' stream closed): so do the commands this process runs.
  kill 'KILL', -$_ for keys %commands;
  exit 0;
}
`;

class Forker {
  // The supervisor's side of the forker (see FORKER above): spawn(), mkfifo() and onExit() as the
  // Spawner's. Until it says `ready`, requests are kept: should it fail to start, they go to a
  // Spawner instead, and so does every later one. Once ready, its death is the supervisor's
  // (`died`), as the shells it forked can no longer be waited for.
  constructor(program, args, front, hostIn, hostOut, hooks) {
    // `program args` is the forker: its C program (`front`: it reads the host's frames, and passes
    // on those it does not take), or perl with the FORKER script. `hooks` are the supervisor's.
    this.front = front;
    this.hooks = hooks;
    this.hostIn = hostIn;
    this.hostOut = hostOut;
    this.replies = new Map(); // request number: the reply callback
    this.unsent = []; // requests made before `ready`, each as a function that makes it of a Spawner
    this.exits = new Map(); // pid: (code, signal) callback
    this.next = 0;
    this.state = "starting"; // then "ready", or "failed" (a Spawner does the work)
    this.fallback = null;
    this.inbox = Buffer.alloc(0);
    // No environment: perl's PERL5OPT and the like cannot change how it runs, nor a LANG its locale warn.
    // Its 3 is the host's stream, its 4 the supervisor's frames for it (see FORKER).
    // The program's 5 is the host's stream too, and 6 its frames passed on.
    const stdio = ["pipe", "pipe", "inherit", hostOut.fd, "pipe", ...(this.front ? [hostIn.fd, "pipe"] : [])];
    this.child = childProcess.spawn(program, args, { stdio, env: {} });
    hostOut.through(this.child.stdio[4]);
    if (this.front) hooks.listen(this.child.stdio[6], false);
    this.child.stdin.on("error", () => {}); // it died: 'exit' says so
    this.child.stdout.on("data", (chunk) => this.read(chunk));
    this.child.on("error", (error) => this.failed(error.message));
    this.child.on("exit", (code, signal) => {
      if (this.state === "ready") hooks.died(`the forker ended (${signal || `exit status ${code}`})`);
      else this.failed(`the forker exited (${signal || `exit status ${code}`})`);
    });
    const variables = Object.entries(environment).map(([name, value]) => `${name}=${value}`);
    this.send("v", variables);
    this.send("w", WAITING_SHELL_ARGS);
  }

  get runsCommands() {
    // Whether the forker runs commands itself (not once a Spawner took over): it keeps the waiting shells.
    return this.state !== "failed";
  }

  get takesRuns() {
    // Whether run() may be asked: the program took the commands it could run already.
    return this.runsCommands && !this.front;
  }

  send(op, fields) {
    const payload = Buffer.from([op, ...fields].join("\0"));
    this.child.stdin.write(Buffer.concat([Buffer.from(`${payload.length}\n`), payload]));
  }

  request(op, fields, reply, fallback) {
    // `fallback(spawner)` makes the same request of a Spawner.
    if (this.state === "failed") {
      fallback(this.fallback);
      return;
    }
    const id = this.next++;
    this.replies.set(id, reply);
    if (this.state === "starting") this.unsent.push(fallback);
    this.send(op, [String(id), ...fields]);
  }

  read(chunk) {
    this.inbox = this.inbox.length ? Buffer.concat([this.inbox, chunk]) : chunk;
    let end;
    while ((end = this.inbox.indexOf(10)) >= 0) {
      const [kind, ...words] = this.inbox.toString("latin1", 0, end).split(" ");
      this.inbox = this.inbox.subarray(end + 1);
      if (kind === "x") {
        const [pid, code, signal] = words.map(Number);
        const onExit = this.exits.get(pid);
        this.exits.delete(pid);
        if (onExit) onExit(signal ? null : code, signal || null);
        continue;
      }
      if (kind === "o") { // a command of the program's overlaps those of the supervisor
        this.hooks.overlapped();
        continue;
      }
      if (kind === "l") { // a command of the program's ended, its group still with members
        this.hooks.leftover(Number(words[0]));
        continue;
      }
      if (kind === "h") { // the host's stream ended
        this.hooks.hostEnded();
        return;
      }
      if (kind === "ready") {
        this.state = "ready";
        this.unsent = [];
        this.hostOut.confirmed();
        continue;
      }
      if (kind === "fail") {
        this.failed(words.join(" "));
        return;
      }
      const id = Number(words[0]);
      const reply = this.replies.get(id);
      this.replies.delete(id);
      if (kind === "p") reply(null, Number(words[1]));
      else if (kind === "e") reply(Object.assign(new Error(words.slice(2).join(" ")), { code: words[1] }), undefined);
      else reply(null);
    }
  }

  readNow() {
    // Read what the forker wrote and the event loop has yet to (its word of a shell's exit, which
    // it reaped as the supervisor saw the shell's pipes close), without waiting for the loop's turn.
    if (this.state === "failed") return;
    const fd = this.child.stdout._handle ? this.child.stdout._handle.fd : -1;
    const buffer = Buffer.allocUnsafe(4096);
    for (let length = 1; fd >= 0 && length > 0;) {
      try {
        length = fs.readSync(fd, buffer, 0, buffer.length, null);
      } catch {
        return; // EAGAIN: nothing more yet
      }
      if (length > 0) this.read(Buffer.from(buffer.subarray(0, length)));
    }
  }

  failed(reason) {
    // It did not start: a Spawner takes over, with every request made so far.
    if (this.state !== "starting") return;
    this.state = "failed";
    process.stderr.write(`supervisor.js: ${reason}: shells are spawned by Node.js instead (slower)\n`);
    this.child.kill("SIGKILL");
    this.hostOut.bypass();
    if (this.front) this.hooks.listen(this.hostIn.open(), true);
    this.fallback = new Spawner();
    for (const fallback of this.unsent) fallback(this.fallback);
    this.unsent = [];
    this.replies.clear();
  }

  mayReapEarly() {
    // Whether a shell's exit status read from /proc (its parent, the forker, has yet to reap it)
    // may be told: not once the forker is dying. A command's `kill -9 $PPID` kills the forker
    // before its shell exits; the supervisor must then end with no EXIT (as when a command kills
    // the supervisor itself), and could otherwise see the shell's exit before the forker's. In
    // /proc/PID/stat a process hit by a fatal signal shows it from kill() on: SIGKILL among its
    // pending signals (field 31), then PF_SIGNALED and PF_EXITING in its flags (field 9) as it
    // takes it, then the state Z.
    if (this.state === "failed") return true;
    const fields = processStat(this.child.pid);
    return fields !== null && fields[0] !== "Z" && fields[0] !== "X" && !(Number(fields[6]) & PF_DYING)
      && !(Number(fields[28]) & (1 << (SIGKILL - 1)));
  }

  spawn(args, stdio, reply) {
    const fds = stdio.map((fd) => (typeof fd === "number" ? String(fd) : ""));
    while (fds.length < 4) fds.push("");
    this.request("s", [...fds, ...args], reply, (spawner) => spawner.spawn(args, stdio, reply));
  }

  mkfifo(names, reply) {
    this.request("m", names, reply, (spawner) => spawner.mkfifo(names, reply));
  }

  run(requestId, script, budget, { started, exited }) {
    // Run the command `requestId`'s `script` (no NUL, at most SCRIPT_PIPE_LIMIT bytes) in one of
    // the forker's waiting shells: it sends the command's output (cut to `budget` bytes; null: no
    // limit) and EXIT to the host itself. started(error, pid), then exited(code, signal) once the
    // EXIT is on its way. ENOSPARE (none waits; or the forker failed to start) leaves the command
    // to the caller.
    const noSpare = () => started(Object.assign(new Error("no waiting shell"), { code: "ENOSPARE" }), undefined);
    const budgetField = budget === null || budget === undefined ? "" : String(budget);
    this.request("r", [String(requestId), budgetField, script], (error, pid) => {
      if (error === null) this.exits.set(pid, exited);
      started(error, pid);
    }, noSpare);
  }

  timingOut(pid) {
    // A command it runs is about to be killed for its timeout: its EXIT says so.
    this.send("t", [String(pid)]);
  }

  busy(running) {
    // Whether commands of the supervisor's own run: the forker's commands overlap them.
    if (this.state !== "failed") this.send("n", [running ? "1" : "0"]);
  }

  onExit(pid, callback) {
    if (this.state === "failed") this.fallback.onExit(pid, callback);
    else this.exits.set(pid, callback);
  }
}

function startSpawner(hostIn, hostOut, hooks) {
  // The forker program, else the perl forker where there is perl, else the Spawner (Node.js's own
  // spawning), said once.
  if (FORKER_CHOICE === "off") return new Spawner();
  if (FORKER_CHOICE !== "perl" && isExecutable(FORKER_PROGRAM)) {
    return new Forker(FORKER_PROGRAM, [String(SPARES)], true, hostIn, hostOut, hooks);
  }
  const candidates = ["/usr/bin", ...(environment.PATH || "").split(":")].filter((d) => path.isAbsolute(d));
  const perl = candidates.map((directory) => path.join(directory, "perl")).find(isExecutable);
  if (perl !== undefined) return new Forker(perl, ["-e", FORKER], false, hostIn, hostOut, hooks);
  process.stderr.write("supervisor.js: no forker program and no perl in this image: shells are spawned by " +
    "Node.js instead (slower)\n");
  return new Spawner();
}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function spawnerThread() {
  // Spawns what the main thread asks for and tells it of each spawn and exit. The stdio
  // descriptors are the main thread's: a process's descriptors belong to all its threads.
  parentPort.on("message", ({ id, op, args, stdio, names }) => {
    const reply = (message) => parentPort.postMessage({ id, ...message });
    const fail = (error) => reply({ error: error.message, code: error.code });
    if (op === "mkfifo") {
      const child = childProcess.spawn("mkfifo", ["-m", "600", "--", ...names], { stdio: "ignore" });
      let replied = false;
      const once = () => replied || (replied = true, reply({}));
      child.on("error", once);
      child.on("exit", once);
      return;
    }
    let child;
    try {
      child = childProcess.spawn("/bin/sh", args, { stdio, detached: true, env: environment, argv0: "sh" });
    } catch (error) {
      fail(error);
      return;
    }
    if (child.pid === undefined) { // the reason comes with the 'error' event (EAGAIN, say)
      child.on("error", fail);
      return;
    }
    const pid = child.pid;
    child.on("exit", (code, signal) => parentPort.postMessage({ exit: true, pid, code, signal }));
    reply({ pid });
  });
}

function hostStream(fd, readable) {
  // A pipe or socket as a stream; anything else (a file, a terminal) through the fs module.
  try {
    return new net.Socket({ fd, readable, writable: !readable });
  } catch {
    return readable ? fs.createReadStream(null, { fd }) : fs.createWriteStream(null, { fd });
  }
}

function main() {
  // Frames own fd 1; nothing else of this process writes there (console.log would corrupt it).
  console.log = console.info = console.debug = console.error;
  const dial = process.argv.indexOf("--dial");
  if (dial === -1) {
    new Supervisor({ fd: 0, open: () => hostStream(0, true) }, new HostOut(hostStream(1, false), 1)).serve();
    return;
  }
  // Started with the container: frames go over the host's socket (supervisor.py's `_dial`); when
  // nobody listens there (the host gave up waiting, a restart of the container), exit quietly.
  const host = net.connect(process.argv[dial + 1]);
  const unanswered = () => process.exit(0);
  host.once("error", unanswered);
  host.once("connect", () => {
    host.off("error", unanswered);
    // Paused before the 'connect' handlers return, Node.js does not start reading it: the forker
    // program reads the host's frames where there is one (see Supervisor.listen).
    host.pause();
    new Supervisor({ fd: host._handle.fd, open: () => host.resume() }, new HostOut(host, host._handle.fd)).serve();
  });
}

if (isMainThread) main();
else spawnerThread();
