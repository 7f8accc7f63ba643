"""mkdocs hook: pages that live outside ``docs/`` — the README as the home page, and the notebooks.

- ``README.md`` becomes ``index.md``. Its links are written for GitHub, relative to the repository
  root; a link into ``docs/`` loses that prefix so it points at the page, and ``#anchors`` stay as
  they are (the headings are the same). Any other relative link would point outside the site and
  fails the strict build.
- A nav entry whose value is a glob (``Notebooks: notebooks/[0-9][0-9]-*.ipynb``) becomes one entry
  per matching file of the repository, in name order, and those files are added to the site under
  the same path; mkdocs-jupyter renders them with the outputs they were committed with. With no
  match the entry is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

REPO_ROOT = Path(__file__).resolve().parents[2]
_DOCS_LINK = re.compile(r"(\]\(|^\[[^\]]+\]:\s*)docs/", re.M)  # inline links and link definitions
_globbed: list[str] = []


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
                    expanded.append({title: matches})
            else:
                expanded.append(entry)
        else:
            expanded.append(entry)
    return expanded


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


def on_serve(server, config: MkDocsConfig, builder):
    if (REPO_ROOT / "notebooks").is_dir():
        server.watch(str(REPO_ROOT / "notebooks"))
    return server
