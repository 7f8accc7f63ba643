"""The %%sandbox magics through an in-process IPython shell, against real containers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from pydantic_deep.notebook.magics import SandboxFailure, SandboxMagics


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.config.pop("SandboxMagics", None)  # the defaults, whatever an earlier module configured
    shell.run_line_magic("load_ext", "pydantic_deep")
    shell.run_line_magic("load_ext", "pydantic_deep")  # twice is harmless
    yield shell
    shell.run_line_magic("unload_ext", "pydantic_deep")
    shell.config.pop("SandboxMagics", None)  # %config lines persist on the shared shell: later modules start clean


def magics(ip: InteractiveShell) -> SandboxMagics:
    return ip.magics_manager.registry["SandboxMagics"]


def test_variables_live_from_cell_to_cell_and_output_streams(ip: InteractiveShell) -> None:
    with capture_output() as first:
        ip.run_cell_magic("sandbox", "", "x = 41\nprint('hello from', __import__('socket').gethostname())")
    sandbox = magics(ip).sandboxes["notebook"]
    assert first.stdout == f"hello from {sandbox.container_id[:12]}\n"
    with capture_output() as second:
        ip.run_cell_magic("sandbox", "", "x + 1")
    assert [output.data for output in second.outputs] == [{"text/plain": "42"}]


def test_dataframe_as_html_and_figure_as_png(ip: InteractiveShell) -> None:
    with capture_output() as table:
        ip.run_cell_magic("sandbox", "", "import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    [output] = table.outputs
    assert "<table" in output.data["text/html"] and "a" in output.data["text/plain"]
    with capture_output() as figure:
        ip.run_cell_magic("sandbox", "", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    [image] = figure.outputs
    assert set(image.data) == {"text/plain", "image/png"}


def test_exception_shows_the_containers_traceback_and_fails_the_cell(ip: InteractiveShell) -> None:
    with pytest.raises(SandboxFailure) as caught:
        ip.run_cell_magic("sandbox", "", "def f():\n    return 1 / 0\nf()")
    lines = caught.value._render_traceback_()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "ZeroDivisionError: division by zero"
    assert '  File "<cell>", line 2, in f' in lines
    with capture_output() as shown:
        ip.run_cell_magic("sandbox", "--no-raise", "1 / 0")  # does not fail, and shows the traceback
    assert shown.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


def test_interrupt_stops_the_cell_and_the_interpreter_survives(ip: InteractiveShell) -> None:
    ip.run_cell_magic("sandbox", "", "kept = 'still here'")
    interpreter = magics(ip).interpreters["notebook"]
    started = threading.Event()
    # The test's stand-in for the kernel's interrupt button: interrupt once the cell printed.
    original = interpreter._on_output

    def watch(chunk: object) -> None:
        original(chunk)  # type: ignore[arg-type]
        if "working" in getattr(chunk, "text", ""):
            started.set()

    interpreter._process._pending.collector.on_output = watch  # type: ignore[union-attr]
    threading.Thread(target=lambda: started.wait(30) and interpreter.interrupt()).start()
    with pytest.raises(KeyboardInterrupt):
        ip.run_cell_magic("sandbox", "", "import time\nprint('working', flush=True)\nwhile True: time.sleep(0.01)")
    with capture_output() as after:
        ip.run_cell_magic("sandbox", "", "kept")
    assert after.outputs[0].data["text/plain"] == "'still here'"


def test_timeout_interrupts_a_python_cell(ip: InteractiveShell) -> None:
    ip.run_cell_magic("sandbox", "", "survivor = 1")
    with pytest.raises(SandboxFailure, match="ran past its 0.5 s"):
        ip.run_cell_magic("sandbox", "-t 0.5", "import time\nwhile True: time.sleep(0.01)")
    with capture_output() as after:
        ip.run_cell_magic("sandbox", "", "survivor")
    assert after.outputs[0].data["text/plain"] == "1"


def test_output_arrives_while_the_cell_runs(ip: InteractiveShell) -> None:
    interpreter = magics(ip).interpreter_for()
    sandbox = magics(ip).sandbox_for()
    seen: list[str] = []

    def on_event(event: dict) -> None:
        before = "".join(seen)
        seen.append(event.get("text", ""))
        if "first\n" in "".join(seen) and "first\n" not in before:
            sandbox.write_file("go-on", b"")  # the cell waits for this: proof the line came early

    code = ("import os, time\nprint('first', flush=True)\n"
            "while not os.path.exists('go-on'): time.sleep(0.01)\nprint('second')")
    assert interpreter.execute(code, on_event=on_event).status == "ok"
    assert "".join(seen) == "first\nsecond\n"


def test_top_level_await_works_in_cells(ip: InteractiveShell) -> None:
    ip.user_ns["box"] = magics(ip).sandbox_for()
    result = ip.run_cell("out = await box.aexecute('echo awaited')")
    assert result.success and ip.user_ns["out"].output == "awaited\n"


def test_push_and_pull(ip: InteractiveShell) -> None:
    ip.user_ns["frame"] = pd.DataFrame({"n": [1, 2, 3]})
    ip.user_ns["settings"] = {"depth": 3, "tags": ("a", "b")}
    ip.run_line_magic("sandbox_push", "frame settings")
    ip.run_cell_magic("sandbox", "", "total = int(frame.n.sum()) + settings['depth']\ndoubled = frame * 2")
    ip.run_line_magic("sandbox_pull", "total doubled")
    assert ip.user_ns["total"] == 9 and ip.user_ns["doubled"].n.tolist() == [2, 4, 6]
    ip.user_ns["function"] = len
    with pytest.raises(UsageError, match="cannot move a builtin_function_or_method"):
        ip.run_line_magic("sandbox_push", "function")
    with pytest.raises(UsageError, match="name 'nothing' is not defined"):
        ip.run_line_magic("sandbox_pull", "nothing")


def test_shell_cells_out_variable_and_other_sandboxes(ip: InteractiveShell) -> None:
    with capture_output() as shell:
        ip.run_cell_magic("sandbox", "--shell -o listing", "echo $((6 * 7)); whoami")
    assert shell.stdout == "42\nsandbox\n" and ip.user_ns["listing"].exit_code == 0
    with pytest.raises(SandboxFailure, match="exit code 3"):
        ip.run_cell_magic("sandbox", "--shell", "exit 3")


def test_node_runtimes_keep_javascript_state(ip: InteractiveShell) -> None:
    with capture_output() as first:
        ip.run_cell_magic("sandbox", "-s js -r node-minimal",
                          "let total = 40\nconsole.log('from node', process.version)")
    assert first.stdout.startswith("from node v20.")
    assert magics(ip).sandboxes["js"].supervisor == "node"  # cells ride on the Node.js supervisor's channel
    with capture_output() as second:
        ip.run_cell_magic("sandbox", "-s js", "total + 2")
    assert [output.data for output in second.outputs] == [{"text/plain": "42"}]
    with pytest.raises(SandboxFailure, match="ReferenceError: missing is not defined"):
        ip.run_cell_magic("sandbox", "-s js", "missing + 1")
    ip.user_ns["config"] = {"depth": 2, "tags": ["a"]}
    ip.run_line_magic("sandbox_push", "-s js config")
    ip.run_cell_magic("sandbox", "-s js", "const doubled = config.depth * 2")
    ip.run_line_magic("sandbox_pull", "-s js doubled total")
    assert (ip.user_ns["doubled"], ip.user_ns["total"]) == (4, 40)
    with capture_output() as shell:
        ip.run_cell_magic("sandbox", "-s js --shell", "node -e 'console.log(1 + 1)'")
    assert shell.stdout == "2\n"
    interpreter = magics(ip).interpreters["js"]
    threading.Timer(0.5, interpreter.interrupt).start()
    with pytest.raises(KeyboardInterrupt):
        ip.run_cell_magic("sandbox", "-s js", "while (true) {}")
    with capture_output() as after:
        ip.run_cell_magic("sandbox", "-s js", "total")
    assert after.outputs[0].data["text/plain"] == "40"
    ip.run_line_magic("sandbox", "stop -s js")
    assert "js" not in magics(ip).sandboxes


def test_line_subcommands(ip: InteractiveShell, tmp_path: object) -> None:
    from pathlib import Path

    data = Path(str(tmp_path)) / "upload-me.csv"
    data.write_text("a,b\n")
    with capture_output() as out:
        ip.run_line_magic("sandbox", f"upload {data}")
        ip.run_line_magic("sandbox", "files /uploads")
        ip.run_line_magic("sandbox", "runtimes")
        ip.run_line_magic("sandbox", "status")
    assert "Uploaded /uploads/upload-me.csv" in out.stdout and "upload-me.csv" in out.stdout
    assert "python-datascience" in out.stdout and "notebook: <DockerSandbox" in out.stdout
    ip.run_line_magic("sandbox", "restart")
    with pytest.raises(SandboxFailure, match="NameError"):
        ip.run_cell_magic("sandbox", "", "x")  # the variables went with the restart
    with pytest.raises(UsageError, match="unknown subcommand 'bogus'"):
        ip.run_line_magic("sandbox", "bogus")


def test_local_backend_runs_cells_without_docker(ip: InteractiveShell) -> None:
    ip.run_line_magic("config", "SandboxMagics.backend = 'local'")
    try:
        with capture_output() as out:
            ip.run_cell_magic("sandbox", "-s here",
                              "import os\nlocal_value = 7\nprint(os.environ['PYDANTIC_DEEP_UPLOADS'])")
        assert "NOT ISOLATED" in out.stderr and out.stdout.rstrip().endswith("/uploads")
        assert type(magics(ip).sandboxes["here"]).__name__ == "LocalSandbox"
        with capture_output() as value:
            ip.run_cell_magic("sandbox", "-s here", "local_value * 6")
        assert value.outputs[0].data["text/plain"] == "42"
    finally:
        ip.run_line_magic("sandbox", "stop -s here")
        ip.run_line_magic("config", "SandboxMagics.backend = 'docker'")


def test_config_and_unload(ip: InteractiveShell) -> None:
    ip.run_line_magic("config", "SandboxMagics.session = 'other'")
    try:
        assert magics(ip).session == "other"
    finally:
        ip.run_line_magic("config", "SandboxMagics.session = 'notebook'")


def test_unload_stops_the_sandboxes_and_removes_the_magics(ip: InteractiveShell) -> None:
    ip.run_cell_magic("sandbox", "--shell", "true")
    sandbox = magics(ip).sandboxes["notebook"]
    ip.run_line_magic("unload_ext", "pydantic_deep")
    assert sandbox.state.value == "stopped"
    assert "sandbox" not in ip.magics_manager.magics["cell"] and "sandbox_push" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "pydantic_deep")  # back, for the other tests and the fixture
