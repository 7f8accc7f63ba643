"""Checks of the arguments that cross into a container: text it can hold unchanged, and timeouts.

A container receives text as UTF-8 bytes, through C strings: a NUL byte would cut a command or a
path short, and a lone surrogate (which Python strings may hold, UTF-8 may not) cannot be sent at
all. Both are refused up front, with an error that names the argument, instead of failing deep in
the engine or changing what runs.
"""

from __future__ import annotations

import math

from .errors import InvalidArgumentError, InvalidArgumentTypeError, shown

__all__ = ["MAX_TIMEOUT", "checked_text", "checked_timeout", "file_content"]

# The supervisor waits with epoll, whose timeout is an int of milliseconds (at most ~24.8 days).
MAX_TIMEOUT = 1_000_000.0


def checked_text(value: object, what: str) -> str:
    """``value``, checked to be a ``str`` a container can receive unchanged.

    Raises:
        InvalidArgumentTypeError: not a ``str``.
        InvalidArgumentError: it holds a NUL byte or a lone surrogate.
    """
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidArgumentError(f"{what} {shown(value)} contains a NUL byte")
    _utf8(value, f"{what} {shown(value)}")
    return value


def file_content(content: bytes | bytearray | memoryview | str) -> bytes:
    """The bytes of a file's content: bytes as they are, text as UTF-8.

    Raises:
        InvalidArgumentError: text with a lone surrogate, which UTF-8 cannot hold.
    """
    return _utf8(content, "file content") if isinstance(content, str) else bytes(content)


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{what} is not valid Unicode: it holds the lone surrogate {value[exc.start]!r} at position {exc.start}"
        ) from None


def checked_timeout(value: object, what: str) -> float:
    """``value``, checked to be a number of seconds in ``(0, MAX_TIMEOUT]``.

    Raises:
        InvalidArgumentTypeError: not a number.
        InvalidArgumentError: zero, negative, not a number, or more than ``MAX_TIMEOUT``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentTypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise InvalidArgumentError(
            f"{what} must be a positive number of seconds up to {MAX_TIMEOUT:.0f}, not {value!r}")
    return float(value)
