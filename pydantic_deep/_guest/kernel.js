// The JavaScript twin of kernel.py: a Node.js interpreter inside the container whose variables
// live from cell to cell. Same protocol: JSON requests on stdin, JSON replies on stdout (see
// kernel.py); values move as JSON. Node.js built-ins only.
"use strict";
const readline = require("readline");
const util = require("util");
const vm = require("vm");

const writeOut = process.stdout.write.bind(process.stdout);
const send = (message) => writeOut(JSON.stringify(message) + "\n");
for (const [name, stream] of [["stdout", process.stdout], ["stderr", process.stderr]]) {
  stream.write = (chunk, encoding, callback) => {
    send({ kind: "stream", name, text: Buffer.isBuffer(chunk) ? chunk.toString("utf8") : String(chunk) });
    const done = typeof encoding === "function" ? encoding : callback;
    if (done) done();
    return true;
  };
}
process.on("SIGINT", () => {}); // interrupts the cell (breakOnSigint), never the interpreter

const context = vm.createContext({
  console, require, process, Buffer, URL, TextEncoder, TextDecoder,
  setTimeout, clearTimeout, setInterval, clearInterval, setImmediate, clearImmediate, queueMicrotask,
  module: { exports: {} },
});

async function execute(code) {
  try {
    let value = vm.runInContext(code, context, { filename: "<cell>", breakOnSigint: true });
    if (value && typeof value.then === "function") value = await value;
    if (value !== undefined) {
      context._ = value;
      send({ kind: "result", data: { "text/plain": util.inspect(value, { colors: false }) } });
    }
    return "ok";
  } catch (error) {
    if (error && error.code === "ERR_SCRIPT_EXECUTION_INTERRUPTED") return "interrupted";
    const name = (error && error.name) || "Error";
    send({ kind: "error", ename: name, evalue: String(error && error.message), traceback: String(error && error.stack) });
    return "error";
  }
}

async function handle(request) {
  if (request.op === "execute") return execute(request.code);
  if (request.op === "push") {
    if (request.value.type !== "json") {
      send({ kind: "error", ename: "TypeError", evalue: "only JSON values can be moved into Node.js", traceback: "" });
      return "error";
    }
    context.__pushed = JSON.parse(request.value.json);
    vm.runInContext(`var ${request.name} = __pushed; delete globalThis.__pushed;`, context);
    return "ok";
  }
  if (request.op === "pull") {
    let value;
    try {
      value = vm.runInContext(request.name, context); // finds `let` and `const` names too
    } catch (error) {
      send({ kind: "error", ename: error.name, evalue: error.message, traceback: "" });
      return "error";
    }
    send({ kind: "value", value: { type: "json", json: JSON.stringify(value) } });
    return "ok";
  }
  return "error";
}

let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  queue = queue.then(async () => send({ kind: "done", status: await handle(JSON.parse(line)) }));
});
send({ kind: "ready", language: "javascript", version: process.version });
