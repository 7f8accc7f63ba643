"""mkdocs hook: pages that live outside ``docs/`` — the README as the home page, and the notebooks.

- ``README.md`` becomes ``index.md``. Its links are written for GitHub, relative to the repository
  root; a link into ``docs/`` loses that prefix so it points at the page, and ``#anchors`` stay as
  they are (the headings are the same). Any other relative link would point outside the site and
  fails the strict build.
- A nav entry whose value is a glob (``Notebooks: notebooks/[0-9][0-9]-*.ipynb``) becomes one entry
  per matching file of the repository, in name order, and those files are added to the site under
  the same path; mkdocs-jupyter renders them with the outputs they were committed with. With no
  match the entry is left out. A notebook's nav title is its first heading, with its code spans'
  text kept (mkdocs would drop "`%%sandbox`" from "`%%sandbox` and the widgets").
- On notebook pages, what a cell wrote to stderr that is not an error (a log line saying the base
  image fell back to its air-gapped build, say) shows as plain output, not in the error colours
  Jupyter gives stderr; a traceback or a message naming an error keeps them.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

REPO_ROOT = Path(__file__).resolve().parents[2]
_DOCS_LINK = re.compile(r"(\]\(|^\[[^\]]+\]:\s*)docs/", re.M)  # inline links and link definitions
_globbed: list[str] = []
_STDERR = re.compile(r'(<div class="[^"]*jp-RenderedText[^"]*" data-mime-type=")application/vnd\.jupyter\.stderr'
                     r'("[^>]*>\s*<pre>)(.*?)(</pre>)', re.S)
_ERROR_WORDS = re.compile(r"Traceback|Error\b|Exception\b|error:", re.I)


def notebook_title(path: Path) -> str | None:
    """The first heading of a notebook's first markdown cell, code spans kept as their text."""
    for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", []))
            heading = re.search(r"^#{1,6}\s+(.+?)\s*$", source, re.M)
            return heading.group(1).replace("`", "") if heading else None
    return None


def calm_stderr(page_html: str) -> str:
    """Stderr outputs that hold no error shown as plain output (see the module's docstring)."""
    def restyle(match: re.Match[str]) -> str:
        if _ERROR_WORDS.search(html.unescape(re.sub(r"<[^>]+>", "", match.group(3)))):
            return match.group(0)
        return f"{match.group(1)}text/plain{match.group(2)}{match.group(3)}{match.group(4)}"

    return _STDERR.sub(restyle, page_html)


def readme_as_home_page(readme: str) -> str:
    """The README's text with its links into ``docs/`` made relative to the site's root."""
    return _DOCS_LINK.sub(r"\1", readme)


def _expand_globs(nav: list) -> list:
    expanded = []
    for entry in nav:
        if isinstance(entry, dict):
            title, value = next(iter(entry.items()))  # a nav entry is a one-key mapping
            if isinstance(value, list):
                expanded.append({title: _expand_globs(value)})
            elif isinstance(value, str) and "*" in value:
                matches = sorted(path.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.glob(value))
                _globbed.extend(matches)
                if matches:
                    expanded.append({title: [_titled(match) for match in matches]})
            else:
                expanded.append(entry)
        else:
            expanded.append(entry)
    return expanded


def _titled(path: str) -> str | dict[str, str]:
    """A nav entry for ``path``: with its notebook title when it has one."""
    title = notebook_title(REPO_ROOT / path) if path.endswith(".ipynb") else None
    return {title: path} if title else path


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    _globbed.clear()
    config.nav = _expand_globs(config.nav or [])
    return config


@event_priority(100)  # before mkdocs-jupyter looks for notebooks among the files
def on_files(files: Files, config: MkDocsConfig) -> Files:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=readme_as_home_page(readme)))
    for path in _globbed:
        files.append(File(path, str(REPO_ROOT), config.site_dir, config.use_directory_urls))
    return files


def on_page_content(page_html: str, page, config: MkDocsConfig, files: Files) -> str:
    return calm_stderr(page_html) if page.file.src_uri.endswith(".ipynb") else page_html


def on_serve(server, config: MkDocsConfig, builder):
    if (REPO_ROOT / "notebooks").is_dir():
        server.watch(str(REPO_ROOT / "notebooks"))
    return server
