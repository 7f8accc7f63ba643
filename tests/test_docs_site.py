"""The documentation site builds with warnings as errors, as `scripts/docs` builds it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_docs_site_builds_strict(tmp_path: Path) -> None:
    started = time.monotonic()
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=300,
    )
    print(f"mkdocs build --strict: {time.monotonic() - started:.1f} s")
    assert build.returncode == 0, build.stderr[-5000:]
    sandbox_page = (tmp_path / "reference" / "sandbox" / "index.html").read_text()
    assert 'id="pydantic_deep.sandbox.docker.DockerSandbox"' in sandbox_page
    assert 'href="docker-runtimes/"' in (tmp_path / "index.html").read_text()  # README's docs/docker-runtimes.md
    for notebook in sorted(REPO.glob("notebooks/[0-9][0-9]-*.ipynb")):
        assert (tmp_path / "notebooks" / notebook.stem / "index.html").is_file(), f"{notebook.name} has no page"
    widgets_page = (tmp_path / "notebooks" / "04-magics-and-widgets" / "index.html").read_text()
    # The title keeps its code span's text in the navigation and the page's <title>.
    assert "<title>%%sandbox and the widgets - pydantic_deep</title>" in widgets_page
    assert re.search(r'md-ellipsis">\s*%%sandbox and the widgets\s*<', widgets_page)
    # Informational stderr (the base image's fallback) is plain output; the traceback keeps the error colours.
    stderr = re.findall(r'data-mime-type="([^"]+)"[^>]*>\s*<pre>(.{0,40})', widgets_page, re.S)
    fallback = [kind for kind, text in stderr if text.startswith("Base image")]  # committed with the notebook
    assert fallback and "application/vnd.jupyter.stderr" not in fallback
    assert any(kind == "application/vnd.jupyter.stderr" for kind, text in stderr if "Traceback" in text)
