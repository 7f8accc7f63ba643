// The front end of pydantic_deep.notebook.terminal.TerminalWidget (an anywidget). xterm.js and its
// fit add-on come before this code in the same module (vendored, see scripts/vendor-xterm), as
// `xterm` and `xtermFit`. Keys go to Python as {type: "input"}, sizes as {type: "resize"}; output
// comes back as {type: "output"}, the end as {type: "ended"}.

function render({ model, el }) {
  const box = document.createElement("div");
  box.className = "pd-terminal";
  el.appendChild(box);
  const term = new xterm.Terminal({
    cols: model.get("cols"), rows: model.get("rows"), fontSize: 13, cursorBlink: true, scrollback: 5000,
    // A font list, not a CSS variable: xterm.js measures the font on a canvas, which cannot resolve one.
    fontFamily: "Menlo, Consolas, \"DejaVu Sans Mono\", \"Liberation Mono\", monospace",
  });
  const fit = new xtermFit.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  // Keys typed here are the terminal's, not JupyterLab's shortcuts (a, b, dd, Shift-Enter...).
  box.addEventListener("keydown", (event) => event.stopPropagation());
  term.onData((data) => model.send({ type: "input", data }));
  term.onResize(({ cols, rows }) => model.send({ type: "resize", cols, rows }));
  const onMessage = (message) => {
    if (message.type === "output") term.write(message.data);
    else if (message.type === "ended") {
      term.write(`\r\n\x1b[2m[${message.text}]\x1b[0m\r\n`);
      box.classList.add("pd-terminal-ended");
    }
  };
  model.on("msg:custom", onMessage);
  // As wide as the output area allows; as many rows as asked.
  const refit = () => {
    const proposed = fit.proposeDimensions();
    if (proposed && proposed.cols > 0 && proposed.cols !== term.cols) term.resize(proposed.cols, term.rows);
  };
  const observer = new ResizeObserver(refit);
  observer.observe(box);
  refit();
  model.send({ type: "ready" }); // Python replays what the terminal showed before this view
  return () => {
    observer.disconnect();
    model.off("msg:custom", onMessage);
    term.dispose();
  };
}

export default { render };
