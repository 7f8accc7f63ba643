"""mkdocs hook: the API reference's front page lists what ``from pydantic_deep import ...`` offers.

The marker ``<!-- exports -->`` in ``reference/index.md`` becomes a table of the package's
``__all__``: each name links to its entry in the reference, with the first paragraph of its
docstring. A name the reference does not document is a broken link, so the strict build fails
until a reference page covers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

HOOKS = Path(__file__).resolve().parent
MARKER = "<!-- exports -->"


def _modules(package: griffe.Module) -> Iterator[griffe.Module]:
    """Every module of the package, subpackages' included."""
    for module in package.modules.values():
        yield module
        yield from _modules(module)


def _member(package: griffe.Module, name: str) -> griffe.Object:
    """The object behind an exported name; a lazy export (a module ``__getattr__``) is looked up in the
    submodule whose ``__all__`` names it."""
    if name in package.members:
        return package[name].final_target
    (module,) = (module for module in _modules(package) if name in (module.exports or []))
    return module[name]


def _modules(package: griffe.Module) -> Iterator[griffe.Module]:
    """Every module of ``package``, its subpackages' too."""
    for module in package.modules.values():
        yield module
        yield from _modules(module)


def exports_table(package_name: str, search_path: Path) -> str:
    extensions = griffe.load_extensions(f"{HOOKS / 'sphinx_roles.py'}:SphinxRoles")
    package = griffe.load(package_name, search_paths=[str(search_path)], extensions=extensions)
    rows = ["| Name | What it is |", "|---|---|"]
    for name in package.exports or []:
        target = _member(package, str(name))
        if target.docstring:
            summary = " ".join(target.docstring.value.split("\n\n")[0].split()).replace("|", "\\|")
        else:  # an undocumented constant: its type says what it is
            summary = f"`{target.annotation}`"
        rows.append(f"| [`{name}`][{target.path}] | {summary} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, exports_table("pydantic_deep", HOOKS.parents[1]))
