// The execution channel's far end for images without Python: the Node.js twin of supervisor.py.
//
// It speaks the same frame protocol with the same behaviour (see supervisor.py's docstring, the
// reference; tests/test_protocol.py runs one conformance suite against both). Node.js 18 or newer,
// built-in modules only. Where Node.js lacks what the Python one uses, it is made up for so that a
// command cannot tell which supervisor runs it:
//
// - Pipes. Node.js gives a child's stdio as UNIX socketpairs, and a socket cannot be opened through
//   /proc/self/fd: `echo x > /dev/stderr` fails with ENXIO. The supervisor makes real pipes from
//   FIFOs instead: `mkfifo` (coreutils) creates a batch of them in a private directory ahead of
//   time; opening both ends of one and unlinking it leaves an anonymous pipe. Without `mkfifo` or
//   a writable directory, it falls back to socketpairs.
// - Signals. libuv resets every signal to its default in a child, but commands must ignore SIGXFSZ
//   (a write past the file size limit then fails with "File too large" instead of killing the
//   program). Each shell is started as `trap '' XFSZ; exec /bin/sh -c ...`, so the command's shell
//   inherits SIGXFSZ ignored, as under the Python supervisor.
// - Process groups. `detached: true` starts each shell in a new session, as the leader of its own
//   process group; `process.kill(-pid, signal)` signals the group.
// - NODE_OPTIONS. The host starts the supervisor with the container's NODE_OPTIONS moved aside (into
//   PYDANTIC_DEEP_NODE_OPTIONS) so that nothing of the user's changes how it runs; commands get it
//   back.
"use strict";
const childProcess = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const VERSION = 1;
const HEADER_SIZE = 9; // >BII: kind, request id, payload length
const RUN = 1, STDIN = 2, SIGNAL = 3;
const HELLO = 10, STDOUT = 11, STDERR = 12, EXIT = 13, ERROR = 14;
const WAITING_SHELL = 's=; while IFS= read -r l || [ -n "$l" ]; do s="$s$l\n"; done <&3; exec 3<&-; eval "$s"';
const IGNORING_XFSZ = "trap '' XFSZ; exec /bin/sh -c \"$1\" sh";
const SCRIPT_PIPE_LIMIT = 1024;
const OOM_COUNTERS = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"];
const SIGKILL = os.constants.signals.SIGKILL;
const KILLED_BY_SIGKILL = 128 + SIGKILL;
const REAP_WAIT_MS = 1000, REAP_STEP_MS = 10;
const FIFO_BATCH = 96, FIFO_LOW = 48; // FIFOs made per `mkfifo` run, and the stock that triggers one
const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
const PROCESS_LIMIT_MESSAGE = "the sandbox is at its process limit (pids_limit): its commands' processes use them all";

const environment = { ...process.env };
if ("PYDANTIC_DEEP_NODE_OPTIONS" in environment) {
  environment.NODE_OPTIONS = environment.PYDANTIC_DEEP_NODE_OPTIONS;
  delete environment.PYDANTIC_DEEP_NODE_OPTIONS;
}

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
  // A stock of FIFOs in a private directory; each becomes one anonymous pipe.
  constructor() {
    this.directory = null;
    this.stock = [];
    this.made = 0;
    this.refilling = false;
    try {
      this.directory = makePrivateDirectory();
      this.refill(true);
    } catch {
      this.directory = null; // socketpairs, then
    }
  }

  names(count) {
    const names = [];
    for (let i = 0; i < count; i++) names.push(path.join(this.directory, String(this.made++)));
    return names;
  }

  refill(now) {
    if (this.directory === null || this.refilling) return;
    const names = this.names(FIFO_BATCH);
    if (now) {
      const done = childProcess.spawnSync("mkfifo", ["-m", "600", "--", ...names], { stdio: "ignore" });
      if (done.status !== 0) throw new Error("mkfifo failed");
      this.stock.push(...names);
      return;
    }
    this.refilling = true;
    const child = childProcess.spawn("mkfifo", ["-m", "600", "--", ...names], { stdio: "ignore" });
    child.on("error", () => { this.refilling = false; });
    child.on("exit", () => {
      this.refilling = false;
      for (const name of names) if (fs.existsSync(name)) this.stock.push(name);
    });
  }

  // One pipe: [read end, write end], as descriptors; the end a child gets blocks, the supervisor's
  // does not. null when there is no FIFO to make it from.
  open(childReads) {
    if (this.stock.length < FIFO_LOW) this.refill(false);
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
    return null;
  }

  remove() {
    if (this.directory !== null) fs.rmSync(this.directory, { recursive: true, force: true });
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
  // A spawned shell: its child process and the supervisor's ends of its pipes.
  constructor(child, script, outputs, stdin) {
    this.child = child;
    this.pid = child.pid; // undefined: the spawn failed (its 'error' event says why)
    this.script = script; // a waiting shell's: where its command goes (a descriptor or a socket)
    this.outputs = outputs; // [[role, socket], ...]
    this.stdin = stdin;
    this.command = null;
    this.exited = false;
  }

  writeScript(script) {
    // The script fits the pipe's buffer: the write never blocks. False when the shell is gone.
    try {
      if (typeof this.script === "number") {
        fs.writeSync(this.script, script);
        closeQuietly(this.script);
      } else {
        this.script.end(script);
      }
      this.script = null;
      return true;
    } catch {
      return false;
    }
  }

  closeParentEnds() {
    if (typeof this.script === "number") closeQuietly(this.script);
    else if (this.script !== null) this.script.destroy();
    this.script = null;
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

class Supervisor {
  constructor(hostIn, hostOut) {
    this.hostIn = hostIn;
    this.hostOut = hostOut;
    this.commands = new Map(); // by request id
    this.inbox = Buffer.alloc(0);
    this.spare = null;
    this.oomCounter = openOomCounter();
    this.leftoverGroups = new Set(); // process groups of finished commands that still had members
    this.pipes = new Pipes();
    this.paused = false; // commands' output is not read while the host is slow to take frames
    hostOut.on("drain", () => this.pauseOutput(false));
    hostOut.on("error", () => this.shutDown());
    hostIn.on("data", (chunk) => this.readHost(chunk));
    hostIn.on("end", () => this.shutDown());
    hostIn.on("error", () => this.shutDown());
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

  shutDown() {
    // The host's stream closed: kill every command still running, and go.
    for (const command of this.commands.values()) killGroup(command.pid);
    if (this.spare !== null) killGroup(this.spare.pid);
    this.pipes.remove();
    process.exit(0);
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
    const command = this.commands.get(requestId);
    if (kind === RUN) {
      this.start(requestId, payload);
    } else if (kind === STDIN && command !== undefined && command.shell.stdin !== null) {
      if (payload.length) command.shell.stdin.write(payload);
      else command.shell.stdin.end();
    } else if (kind === SIGNAL && command !== undefined) {
      killGroup(command.pid, JSON.parse(payload.toString()).signal);
    }
  }

  // -- starting commands ---------------------------------------------------------------------------

  spawn(command, withStdin) {
    // `sh -c command` in a new session; with no command, a shell that waits for one on fd 3 (see
    // supervisor.py's _spawn). Throws what the spawn throws at once (EMFILE); a failure that comes
    // with the child's 'error' event (EAGAIN at the process limit) leaves the shell's pid undefined.
    const opened = [];
    const pipe = (childReads) => {
      const ends = this.pipes.open(childReads);
      if (ends !== null) opened.push(...ends);
      return ends; // [read end, write end]
    };
    const script = command === null ? pipe(true) : null;
    const out = pipe(false), err = pipe(false);
    const input = withStdin ? pipe(true) : null;
    // The child's end of each FIFO pipe; where there is none, a socketpair ("pipe").
    const stdio = [withStdin ? (input ? input[0] : "pipe") : "ignore", out ? out[1] : "pipe", err ? err[1] : "pipe"];
    if (command === null) stdio.push(script ? script[0] : "pipe");
    let child;
    try {
      child = childProcess.spawn("/bin/sh", ["-c", IGNORING_XFSZ, "sh", command === null ? WAITING_SHELL : command],
        { stdio, detached: true, env: environment, argv0: "sh" });
    } catch (error) {
      for (const fd of opened) closeQuietly(fd);
      throw error;
    }
    for (const ends of [script, input]) if (ends) closeQuietly(ends[0]); // the child has them now
    for (const ends of [out, err]) if (ends) closeQuietly(ends[1]);
    const reader = (ends, index) => ends ? new net.Socket({ fd: ends[0], readable: true, writable: false })
      : child.stdio[index];
    const stdin = !withStdin ? null : input ? new net.Socket({ fd: input[1], readable: false, writable: true })
      : child.stdin;
    const shell = new Shell(child, command === null ? (script ? script[1] : child.stdio[3]) : null,
      [["stdout", reader(out, 1)], ["stderr", reader(err, 2)]], stdin);
    for (const [role, socket] of shell.outputs) {
      socket.on("data", (chunk) => this.forward(shell.command, role, chunk));
      socket.on("error", () => {});
      if (this.paused) socket.pause();
    }
    if (stdin !== null) stdin.on("error", () => stdin.destroy()); // the command closed its stdin
    child.on("exit", (code, signal) => this.exited(shell, code, signal));
    if (shell.pid === undefined) shell.closeParentEnds();
    return shell;
  }

  spawnThen(command, withStdin, done) {
    // spawn(), then done(error, shell). At the process limit, first kill the background jobs of
    // finished commands, then try again for a while: the killed processes free their slots once
    // init has reaped them, a moment later.
    let deadline = null;
    const attempt = () => {
      let shell;
      try {
        shell = this.spawn(command, withStdin);
      } catch (error) {
        done(error, null);
        return;
      }
      if (shell.pid !== undefined) {
        done(null, shell);
        return;
      }
      shell.child.once("error", (error) => {
        if (error.code !== "EAGAIN") {
          done(error, null);
        } else if (deadline !== null) {
          if (Date.now() > deadline) done(error, null);
          else setTimeout(attempt, REAP_STEP_MS);
        } else if (!this.leftoverGroups.size) {
          done(error, null);
        } else {
          // A group whose processes all ended may have passed its number on to a running command.
          const running = new Set([...this.commands.values()].map((c) => c.pid));
          if (this.spare !== null) running.add(this.spare.pid);
          for (const group of this.leftoverGroups) if (!running.has(group)) killGroup(group);
          this.leftoverGroups.clear();
          deadline = Date.now() + REAP_WAIT_MS;
          attempt();
        }
      });
    };
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
    const spare = this.spare;
    if (spare !== null && !spec.stdin && script.length <= SCRIPT_PIPE_LIMIT) {
      this.spare = null;
      if (!spare.exited && spare.writeScript(script)) {
        this.run(requestId, spec, spare);
        return;
      }
      spare.closeParentEnds(); // the spare was killed (by a `pkill sh`, say)
    }
    this.spawnThen(spec.command, Boolean(spec.stdin), (error, shell) => {
      if (error === null) {
        this.run(requestId, spec, shell);
      } else {
        const reason = error.code === "EAGAIN" ? PROCESS_LIMIT_MESSAGE : error.message;
        this.sendJson(ERROR, requestId, { message: `cannot start /bin/sh: ${reason}` });
      }
    });
  }

  run(requestId, spec, shell) {
    const command = new Command(requestId, shell, spec.max_output, readOomKills(this.oomCounter));
    if (this.commands.size) {
      command.overlapped = true;
      for (const other of this.commands.values()) other.overlapped = true;
    }
    this.commands.set(requestId, command);
    shell.command = command;
    if (spec.timeout) { // at most 2**31 - 1 ms (24.8 days) for a timer; the host allows 11.6
      command.timer = setTimeout(() => {
        command.timedOut = true;
        killGroup(command.pid);
      }, Math.min(spec.timeout * 1000, 2 ** 31 - 1));
    }
    // The next command's shell, while this one runs; after this turn of the event loop, so that
    // the spawn does not hold up this command's output and exit.
    setImmediate(() => this.keepSpare());
  }

  keepSpare() {
    // Have a waiting shell ready for the next command.
    if (this.spare !== null) return;
    try {
      const shell = this.spawn(null, false);
      if (shell.pid !== undefined) this.spare = shell;
    } catch {
      // the process limit, say: commands then start their own shell
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

  exited(shell, code, signal) {
    shell.exited = true;
    const command = shell.command;
    if (command === null) { // a spare that died before it got a command
      if (this.spare === shell) {
        this.spare = null;
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
    const exitCode = signal !== null ? 128 + os.constants.signals[signal] : code;
    // Signal 0 only asks whether a group still has members.
    for (const group of this.leftoverGroups) if (!killGroup(group, 0)) this.leftoverGroups.delete(group);
    if (killGroup(command.pid, 0)) this.leftoverGroups.add(command.pid);
    this.sendJson(EXIT, command.requestId, {
      exit_code: exitCode, timed_out: command.timedOut, dropped: command.dropped,
      oom_killed: this.oomKilled(command, exitCode),
    });
  }

  oomKilled(command, exitCode) {
    // Whether the OOM killer struck this command (see supervisor.py's docstring).
    const now = readOomKills(this.oomCounter);
    if (now === null || command.oomKills === null || now <= command.oomKills) return false;
    return !command.overlapped || (exitCode === KILLED_BY_SIGKILL && !command.timedOut);
  }
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
  const supervisor = new Supervisor(hostStream(0, true), hostStream(1, false));
  supervisor.serve();
}

main();
