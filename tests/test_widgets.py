"""The notebook widgets, driven through their values and buttons, checked inside the containers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from helpers import poll_until
from IPython.core.interactiveshell import InteractiveShell

from pydantic_deep import SessionManager
from pydantic_deep.notebook.magics import SandboxMagics
from pydantic_deep.widgets import RuntimePicker, SessionMonitor, UploadPanel, current_magics, dashboard

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def magics() -> Iterator[SandboxMagics]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "pydantic_deep")
    yield current_magics()
    shell.run_line_magic("unload_ext", "pydantic_deep")


def test_runtime_picker_builds_and_switches_the_notebook_runtime(magics: SandboxMagics) -> None:
    picker = RuntimePicker(magics)
    assert set(picker.dropdown.options) >= {"python-minimal", "python-web", "node-react"}
    picker.dropdown.value = "python-web"
    assert "FastAPI" in picker.details.value and "Image: " in picker.details.value
    picker.start_button.click()
    assert picker.last_action is not None
    picker.last_action.result(timeout=600)
    assert magics.runtime == "python-web" and magics.sandboxes["notebook"].runtime.name == "python-web"
    assert "Started <DockerSandbox runtime='python-web'" in picker.log.value
    assert "Image: built" in picker.details.value and not picker.start_button.disabled


def test_upload_panel_writes_into_uploads_and_lists_it(magics: SandboxMagics) -> None:
    panel = UploadPanel(magics)
    content = b"x,y\n" + b"1,2\n" * 250_000  # 1 MB, written off the notebook's thread
    panel.upload.value = ({"name": "../big.csv", "type": "text/csv", "size": len(content),
                           "content": memoryview(content), "last_modified": NOW},)
    panel.last_action.result(timeout=120)  # type: ignore[union-attr]
    sandbox = magics.sandbox_for()
    assert sandbox.execute("wc -c < /uploads/big.csv").output.strip() == str(len(content))
    assert "big.csv" in panel.listing.value and f"{len(content):,}" in panel.listing.value


def test_upload_errors_show_inline(magics: SandboxMagics) -> None:
    panel = UploadPanel(magics)
    panel.upload.value = ({"name": "folder/", "type": "", "size": 1, "content": memoryview(b"x"),
                           "last_modified": NOW},)
    with pytest.raises(ValueError):
        panel.last_action.result(timeout=60)  # type: ignore[union-attr]
    assert "color:#b00" in panel.error.value


def test_session_monitor_shows_the_notebook_sandbox_and_stops_it(magics: SandboxMagics) -> None:
    sandbox = magics.sandbox_for()
    monitor = SessionMonitor(magics, interval=3600)  # the test refreshes by hand
    monitor.refresh()
    text = " ".join(row.children[0].value for row in monitor.rows.children[1:])
    assert "notebook" in text and (sandbox.container_id or "")[:12] in text and " MB" in text
    assert re.search(r" · \d+\.\d / \d+ MB · ", text), text  # disk used against its cap (disk_size)
    monitor.rows.children[1].children[1].click()  # Stop
    monitor.last_action.result(timeout=60)  # type: ignore[union-attr]
    assert "notebook" not in magics.sandboxes and sandbox.state.value == "stopped"
    monitor.close()
    assert not monitor._thread.is_alive()


@pytest.mark.anyio
async def test_session_monitor_of_a_session_manager() -> None:
    manager = SessionManager("python-minimal", name="test-monitor")
    try:
        await manager.get_or_create("ada")
        monitor = SessionMonitor(manager, interval=3600)
        monitor.refresh()  # on a thread whose loop runs, as in a kernel
        row = monitor.rows.children[1].children[0].value
        assert "ada · python-minimal · running" in row and re.search(r" · \d+\.\d / 99\d\d MB · ", row), row  # 10g
        monitor.rows.children[1].children[1].click()
        await asyncio.wrap_future(monitor.last_action)  # type: ignore[arg-type]
        assert manager.session_count == 0
        monitor.close()
    finally:
        await manager.shutdown(keep_files=False)


def test_dashboard_and_unload_stop_the_threads(magics: SandboxMagics) -> None:
    box = dashboard()
    assert len(box.children) == 4
    monitor = next(w for w in magics.widgets if isinstance(w, SessionMonitor))
    magics.close()  # what %unload_ext does
    assert not monitor._thread.is_alive() and magics.widgets == []


def test_widgets_need_the_extension() -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("unload_ext", "pydantic_deep")
    try:
        with pytest.raises(RuntimeError, match="%load_ext pydantic_deep"):
            current_magics()
    finally:
        shell.run_line_magic("load_ext", "pydantic_deep")


def test_widgets_on_the_local_backend(magics: SandboxMagics) -> None:
    magics.backend = "local"
    try:
        picker, panel = RuntimePicker(magics), UploadPanel(magics)
        assert "NOT ISOLATED" in picker.details.value
        panel.upload.value = ({"name": "local.txt", "type": "text/plain", "size": 2, "content": memoryview(b"hi"),
                               "last_modified": NOW},)
        panel.last_action.result(timeout=60)  # type: ignore[union-attr]
        assert "local.txt" in panel.listing.value
        assert magics.sandbox_for().execute("cat uploads/local.txt").output == "hi"
        monitor = SessionMonitor(magics, interval=3600)
        monitor.refresh()
        assert "running" in monitor.rows.children[1].children[0].value
        monitor.close()
    finally:
        magics.close()
        magics.backend = "docker"


@pytest.mark.terminal
def test_the_monitor_charts_cpu_and_memory_and_opens_a_terminal(magics: SandboxMagics) -> None:
    magics.runtime = "python-minimal"
    sandbox = magics.sandbox_for()
    monitor = SessionMonitor(magics, interval=3600)  # the test refreshes by hand
    try:
        # A command that burns a core for a while, left running in the background.
        sandbox.execute("sh -c 'end=$(($(date +%s)+30)); while [ $(date +%s) -lt $end ]; do :; done' "
                        ">/dev/null 2>&1 &")

        def cpu_shown() -> float:
            monitor.refresh()
            row = monitor.rows.children[1].children[0].value
            return float(re.search(r"data-kind='cpu' data-last='([\d.]+)'", row).group(1))  # type: ignore[union-attr]

        assert poll_until(lambda: cpu_shown() > 25, "the CPU chart shows the busy loop", timeout=30, interval=0.5)
        row = monitor.rows.children[1].children[0].value
        assert "<polyline" in row and "data-kind='memory'" in row and "data-state='running'" in row
        assert "data-state='running'" in monitor.rows.children[0].value  # the summary above the rows
        monitor.rows.children[1].children[2].click()  # Terminal
        monitor.last_action.result(timeout=60)  # type: ignore[union-attr]
        widget = monitor.terminal
        assert widget is not None and widget in monitor.terminal_area.children
        widget._from_browser(widget, {"type": "input", "data": "echo $((40+2))\n"}, [])  # as the browser sends it
        poll_until(lambda: "42\r\n" in "".join(widget._shown), "the terminal answers", timeout=30)
        widget._from_browser(widget, {"type": "resize", "cols": 120, "rows": 30}, [])
        assert widget.terminal.size == (120, 30) and (widget.cols, widget.rows) == (120, 30)
        monitor.close_terminal()
        assert not widget.terminal.alive and monitor.terminal_area.children == ()
    finally:
        monitor.close()
        magics.stop("notebook")


@pytest.mark.terminal
def test_sandbox_terminal_magic_shows_a_terminal_closed_on_unload() -> None:
    from pydantic_deep.notebook.terminal import TerminalWidget

    magics = current_magics()  # the one %sandbox reaches (a test above loads the extension anew)
    magics.runtime = "python-minimal"
    shell = InteractiveShell.instance()
    shell.run_line_magic("sandbox", "terminal")
    widget = next(w for w in magics.widgets if isinstance(w, TerminalWidget))
    assert widget.terminal.alive and "pydantic_deep" not in widget._esm[:100]  # xterm.js itself comes first
    magics.close()  # what %unload_ext does
    assert not widget.terminal.alive and "notebook" not in magics.sandboxes
