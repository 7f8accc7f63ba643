"""Checks of the egress arguments: host patterns (``network=["pypi.org", "*.example.com"]``),
``secrets`` (headers the egress proxy adds) and ``hosts`` (names pinned to addresses).

A pattern is a DNS name, or ``*.`` and a DNS name (any name below it, not the name itself), with an
optional ``:port``; without one it allows ports 80 and 443 only. Nothing broader is accepted: no
bare ``*``, no IP address, no wildcard inside a name. An argument that reads as a restriction must
never grant more than it says, so anything else is refused with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

from .arguments import checked_text
from .errors import InvalidArgumentError, shown

__all__ = ["checked_host_patterns", "checked_hosts", "checked_secrets"]

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _checked_pattern(pattern: object, what: str) -> str:
    if not isinstance(pattern, str):
        raise InvalidArgumentError(f"{what}: {shown(repr(pattern))} is not a host pattern: give names like "
                                   "'pypi.org' or '*.example.com'")
    text = pattern.strip().lower().rstrip(".")
    name, colon, port = text.partition(":")
    if colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidArgumentError(f"{what}: {shown(pattern)} has no valid port after ':' (1-65535)")
    bare = name.removeprefix("*.")
    if name in ("*", "") or "*" in bare or not _NAME.fullmatch(bare) or "." not in bare:
        if name == "*":
            reason = "'*' would allow every host: pass network=True for the whole network"
        else:
            reason = ("a pattern is a DNS name with a dot ('pypi.org'), or '*.' and one ('*.example.com', the "
                      "names below it), optionally with ':port'")
        raise InvalidArgumentError(f"{what}: {shown(pattern)} is not a host pattern: {reason}")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return f"{name}:{port}" if colon else name
    raise InvalidArgumentError(f"{what}: {shown(pattern)} is an IP address; the egress proxy admits host names only")


def checked_host_patterns(patterns: Sequence[str], what: str = "network") -> tuple[str, ...]:
    """``patterns`` checked and normalized (lowercase, sorted, no duplicates).

    Raises:
        InvalidArgumentError: a string instead of a list, or a pattern that is not one.
    """
    if isinstance(patterns, (str, bytes)):
        raise InvalidArgumentError(f"{what} must be True, False or a list of host patterns like ['pypi.org'], "
                                   f"not the string {shown(str(patterns))}")
    return tuple(sorted({_checked_pattern(pattern, what) for pattern in patterns}))


def checked_secrets(secrets: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    """``secrets`` ({host pattern: {header: value}}) checked; the error never shows a value.

    Raises:
        InvalidArgumentError: a bad pattern, header name, or a value that is not text for a header.
    """
    checked: dict[str, dict[str, str]] = {}
    for pattern, headers in dict(secrets or {}).items():
        key = _checked_pattern(pattern, "secrets")
        if not isinstance(headers, Mapping):
            raise InvalidArgumentError(f"secrets: {pattern!r} must map header names to values, like "
                                       "{'Authorization': 'Bearer ...'}")
        for header, value in headers.items():
            if not isinstance(header, str) or not _HEADER.fullmatch(header):
                raise InvalidArgumentError(f"secrets: {shown(repr(header))} of {pattern!r} is not an HTTP header name")
            if not isinstance(value, str) or any(c in value for c in "\r\n\0") or not value.isprintable():
                raise InvalidArgumentError(f"secrets: the value of header {header!r} of {pattern!r} must be one line "
                                           "of printable text (not shown here)")
            checked.setdefault(key, {})[header] = value
    return checked


def checked_hosts(hosts: Mapping[str, str] | None) -> dict[str, str]:
    """``hosts`` ({name: IPv4 address}) checked.

    Raises:
        InvalidArgumentError: not a DNS name, or not an IPv4 address.
    """
    checked = {}
    for name, address in dict(hosts or {}).items():
        text = checked_text(name, "hosts").lower().rstrip(".")
        if not _NAME.fullmatch(text):
            raise InvalidArgumentError(f"hosts: {shown(name)} is not a DNS name")
        try:
            checked[text] = str(ipaddress.IPv4Address(address))
        except (ValueError, TypeError):
            raise InvalidArgumentError(f"hosts: {shown(str(address))} (for {name!r}) is not an IPv4 address") from None
    return checked
