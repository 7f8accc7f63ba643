"""One real-browser test: JupyterLab in headless Chromium (Debian's, driven by Playwright) runs a
notebook with the dashboard, picks a runtime, uploads a file through the file chooser, and sees it
listed from inside the container."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest
from helpers import answers, poll_until

from pydantic_deep.engine.client import docker_client

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on loopback, its notebook directory, and a token."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: scripts/setup installs it")
    root = tmp_path / "notebooks"
    root.mkdir()
    settings = tmp_path / "settings"
    (settings / "overrides").mkdir(parents=True)
    overrides = {"@jupyterlab/apputils-extension:notification": {"checkForUpdates": False, "fetchNews": "false"}}
    (settings / "overrides.json").write_text(json.dumps(overrides))
    token, port = uuid.uuid4().hex, free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings / "user")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabServerApp.app_settings_dir={settings}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        poll_until(answers(lambda: urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2), OSError),
                   "JupyterLab answers", interval=0.2, give_up=lambda: server.poll() is not None)
        yield f"{base}/lab/tree/dashboard.ipynb?token={token}", root
    finally:
        os.killpg(server.pid, signal.SIGINT)  # like Ctrl-C: kernels shut down, their sandboxes go
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@contextlib.contextmanager
def notebook_running_in_chromium(lab: tuple[str, Path], name: str, cells: list[str]) -> Iterator[Page]:
    """Write a notebook of ``cells`` into the lab, open it in headless Chromium and run all its
    cells from JupyterLab's menu; the browser closes when the block ends."""
    from playwright.sync_api import expect, sync_playwright

    url, root = lab
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(cell) for cell in cells]
    nbformat.write(notebook, root / name)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url.replace("dashboard.ipynb", name))
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            expect(page.locator("text=Python 3 (ipykernel) | Idle")).to_be_visible(timeout=60_000)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)
            yield page
        finally:
            browser.close()


def test_dashboard_in_a_real_browser(lab: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    upload = tmp_path / "from-the-browser.csv"
    upload.write_text("city,visits\nLyon,3\n")
    cells = ["%load_ext pydantic_deep", "from pydantic_deep.widgets import dashboard\ndashboard()"]
    with notebook_running_in_chromium(lab, "dashboard.ipynb", cells) as page:
        select = page.locator(".widget-dropdown select").first
        expect(select).to_be_visible(timeout=120_000)
        select.select_option("python-minimal")
        page.locator("button:has-text('Start')").first.click()
        log = page.locator(".widget-textarea textarea").first
        expect(log).to_have_value(re.compile("Started <DockerSandbox runtime='python-minimal'"), timeout=300_000)
        with page.expect_file_chooser() as chooser:
            page.locator("button.widget-upload").first.click()
        chooser.value.set_files(str(upload))
        expect(page.locator("text=from-the-browser.csv").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(Path(os.environ.get("PYDANTIC_DEEP_SCREENSHOTS", tmp_path)) / "dashboard.png"))
    # From inside the container: the notebook's sandbox holds the file in /uploads.
    sandboxes = docker_client().containers.list(filters={"label": "pydantic-deep.runtime=python-minimal"})
    listings = [c.exec_run(["ls", "/uploads"]).output.decode() for c in sandboxes]
    assert any("from-the-browser.csv" in listing for listing in listings)



VITE_APP = """\
mkdir -p app/node_modules && cd app
ln -sfn /usr/local/lib/node_modules/react /usr/local/lib/node_modules/react-dom node_modules/
cat > vite.config.js <<'END'
export default {
  base: process.env.PYDANTIC_DEEP_PREVIEW_BASE || "/",
  server: { host: "127.0.0.1", port: 5173, strictPort: true },
};
END
cat > index.html <<'END'
<!doctype html><html><body><div id="root"></div><script type="module" src="/main.jsx"></script></body></html>
END
cat > main.jsx <<'END'
import React from "react";
import { createRoot } from "react-dom/client";
import App from "./App.jsx";
const root = createRoot(document.getElementById("root"));
root.render(<App />);
if (import.meta.hot) import.meta.hot.accept("./App.jsx", (next) => root.render(<next.default />));
END
cat > App.jsx <<'END'
import React from "react";
export default function App() { return <h1 id="message">Hello v1 MARK</h1>; }
END
"""


@pytest.mark.preview
def test_a_vite_app_previewed_under_its_cell_updates_without_a_reload(lab: tuple[str, Path], tmp_path: Path) -> None:
    """%sandbox preview shows a Vite React dev server of a node-react sandbox (network off) in an
    iframe routed through the Jupyter server (jupyter-server-proxy); an edit inside the sandbox
    reaches the page by hot module replacement over the proxied WebSocket, without a reload."""
    from playwright.sync_api import expect

    mark = uuid.uuid4().hex
    cells = ["%load_ext pydantic_deep\n%config SandboxMagics.runtime = 'node-react'",
             "%%sandbox --shell\n" + VITE_APP.replace("MARK", mark),
             '%sandbox preview 5173 --absolute --run "cd app && npx vite"']
    with notebook_running_in_chromium(lab, "preview.ipynb", cells) as page:
        iframe = page.locator(".pydantic-deep-preview iframe")
        expect(iframe).to_be_visible(timeout=300_000)
        assert "/proxy/absolute/" in (iframe.get_attribute("src") or "")  # through the Jupyter server
        message = page.frame_locator(".pydantic-deep-preview iframe").locator("#message")
        expect(message).to_have_text(f"Hello v1 {mark}", timeout=120_000)
        frame = next(f for f in page.frames if "/proxy/absolute/" in f.url)
        frame.evaluate("window.__keptAcrossUpdates = 42")
        # The edit, made inside the sandbox (found by the mark its app carries).
        [box] = [c for c in docker_client().containers.list(filters={"label": "pydantic-deep.runtime=node-react"})
                 if mark in c.exec_run(["sh", "-c", "cat app/App.jsx 2>/dev/null"]).output.decode()]
        assert box.exec_run(["sed", "-i", "s/Hello v1/Hello v2/", "app/App.jsx"]).exit_code == 0
        expect(message).to_have_text(f"Hello v2 {mark}", timeout=60_000)
        assert frame.evaluate("window.__keptAcrossUpdates") == 42  # the same page: not reloaded
        page.screenshot(path=str(Path(os.environ.get("PYDANTIC_DEEP_SCREENSHOTS", tmp_path)) / "preview.png"))


@pytest.mark.terminal
def test_terminal_and_monitor_charts_in_a_real_browser(lab: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    artifacts = Path(os.environ.get("PYDANTIC_DEEP_SCREENSHOTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    cells = ["%load_ext pydantic_deep\n%config SandboxMagics.runtime = 'python-minimal'",
             "%sandbox terminal",
             "from pydantic_deep.widgets import SessionMonitor\nSessionMonitor(interval=1)",
             # A busy loop for 40 s, left running in the background: the CPU chart climbs.
             "%%sandbox --shell\nsh -c 'end=$(($(date +%s)+40)); "
             "while [ $(date +%s) -lt $end ]; do :; done' >/dev/null 2>&1 &"]
    with notebook_running_in_chromium(lab, "terminal.ipynb", cells) as page:
        screen = page.locator(".pd-terminal .xterm-rows").first
        try:
            expect(screen).to_contain_text("$", timeout=300_000)  # the shell's prompt
        finally:
            page.screenshot(path=str(artifacts / "terminal-opened.png"))
        page.locator(".pd-terminal .xterm").first.click()
        page.keyboard.type("echo $HOSTNAME")
        page.keyboard.press("Enter")
        hostname = poll_until(lambda: re.search(r"^([0-9a-f]{12})\s*$", screen.inner_text(), re.MULTILINE),
                              lambda: f"the terminal shows a container's hostname: {screen.inner_text()!r}",
                              timeout=60).group(1)
        page.screenshot(path=str(artifacts / "terminal-hostname.png"))
        # The hostname is the id of the notebook's container.
        assert docker_client().containers.get(hostname).labels.get("pydantic-deep.runtime") == "python-minimal"

        cpu = page.locator("svg.pd-chart[data-kind='cpu']").first
        expect(cpu).to_be_visible(timeout=60_000)
        expect(page.locator("svg.pd-chart[data-kind='memory'] polyline").first).to_be_attached(timeout=60_000)
        poll_until(lambda: float(cpu.get_attribute("data-last") or 0) > 25,
                   lambda: f"the CPU chart shows the busy loop (now {cpu.get_attribute('data-last')} %)",
                   timeout=60, interval=0.5)
        line = page.locator("svg.pd-chart[data-kind='cpu'] polyline").first
        before = line.get_attribute("points")
        page.screenshot(path=str(artifacts / "monitor-charts.png"))
        poll_until(lambda: line.get_attribute("points") != before, "the CPU chart moves", timeout=30, interval=0.5)
        page.screenshot(path=str(artifacts / "monitor-charts-later.png"))
