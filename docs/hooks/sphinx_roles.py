"""Griffe extension: Sphinx roles in docstrings (``:class:`DockerSandbox```) become links in the API reference.

A reST ``::`` that ends a line before a literal block becomes ``:`` (the indented block is code in
Markdown too).

The docstrings are Google style but name other objects the Sphinx way. Each role becomes inline
code that links to the object's entry when the reference documents it, and stays plain code
otherwise (an *optional* autoref, so it never fails the strict build). A name is looked up the way
Python would from where the docstring is; ``~a.b.C`` shows as ``C``.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from griffe import Extension, NameResolutionError, Object

_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.M)
_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):`(~?)([\w.]+)(?:\(\))?`")


def _identifier(obj: Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``'s scope, or ``target`` itself if it cannot be found."""
    first, dot, rest = target.partition(".")
    try:
        return obj.resolve(first) + dot + rest
    except NameResolutionError:
        return target


def _link(obj: Object, match: re.Match[str]) -> str:
    tilde, target = match.groups()
    shown = target.rpartition(".")[2] if tilde else target
    return f'<autoref identifier="{escape(_identifier(obj, target))}" optional><code>{escape(shown)}</code></autoref>'


def _convert(obj: Object) -> None:
    if obj.docstring is not None:
        text = _LITERAL_MARKER.sub(":", obj.docstring.value)
        obj.docstring.value = _ROLE.sub(lambda match: _link(obj, match), text)


class SphinxRoles(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        _convert(obj)

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:  # on_object skips the package itself
        _convert(pkg)
