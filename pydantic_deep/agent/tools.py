"""The deep agent's tools: a Pydantic AI toolset acting in the sandbox named by the run's deps.

The sandbox is looked up at run time (``ctx.deps.backend``), never at construction, so one agent
serves any number of users' sandboxes. The toolset carries its own instructions (how to work in the
sandbox, its runtime and the uploaded files), so any agent given it tells the model about the
sandbox.

Problems the model can act on (a missing file, a path outside the sandbox, edit text that is absent
or ambiguous, a file past the size limit) come back to it as failed tool results
(:class:`~pydantic_ai.exceptions.ToolFailed`), which do not end the run. Failures of the machinery
under it (no Docker engine, a container gone or stopped, an image that cannot be built, a broken
execution channel) end the run with their own error: no retry by the model can mend them, and the
application must hear of them.
"""

from __future__ import annotations

import asyncio
import functools
import posixpath
import re
import shlex
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import PurePosixPath
from typing import Any, Concatenate, ParamSpec, TypeVar

from pydantic_ai import BinaryContent, RunContext, ToolReturn
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.toolsets import FunctionToolset

from ..errors import (
    ChannelClosedError,
    DockerUnavailableError,
    ImageBuildError,
    ImageNotAvailableError,
    SandboxError,
    SandboxStateError,
    TransferInterruptedError,
)
from ..execution.channel import OutputCallback
from ..execution.ports import TOKEN_HEADER
from ..paths import UPLOADS_DIR
from .deps import DeepAgentDeps
from .prompt import BASE_INSTRUCTIONS, runtime_section, uploads_section

__all__ = ["INFRASTRUCTURE_ERRORS", "command_output", "sandbox_toolset"]

INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    DockerUnavailableError,  # the engine is gone
    SandboxStateError,  # the sandbox was stopped, its container died or was removed (ContainerGoneError)
    ChannelClosedError,  # the execution channel broke
    TransferInterruptedError,  # a file transfer was cut off under the tool
    ImageBuildError,
    ImageNotAvailableError,
    ConnectionError,  # a lost connection that no layer below turned into one of the above
)
"""Errors a tool lets through, ending the run, instead of reporting them to the model."""

_P = ParamSpec("_P")
_R = TypeVar("_R")
# What a tool hands back to the model at most, so one huge output cannot fill its context.
_MAX_TOOL_OUTPUT = 30_000
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".webp": "image/webp"}

command_output: ContextVar[OutputCallback | None] = ContextVar("command_output", default=None)
"""Set it to watch the output of the ``execute`` tool's commands as they run (the MCP server sends
it on as progress notifications). Called on a reader thread with each :class:`OutputChunk`."""


def _clip(text: str) -> str:
    if len(text) <= _MAX_TOOL_OUTPUT:
        return text
    return text[:_MAX_TOOL_OUTPUT] + f"\n[... {len(text) - _MAX_TOOL_OUTPUT} more characters cut]"


def _failures_to_model(
    tool: Callable[Concatenate[RunContext[DeepAgentDeps], _P], Awaitable[_R]],
) -> Callable[Concatenate[RunContext[DeepAgentDeps], _P], Awaitable[_R]]:
    """Report the errors the model can act on as a failed tool result, in readable words; let
    :data:`INFRASTRUCTURE_ERRORS` through to end the run."""

    @functools.wraps(tool)
    async def reporting(ctx: RunContext[DeepAgentDeps], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await tool(ctx, *args, **kwargs)
        except INFRASTRUCTURE_ERRORS:
            raise
        except (SandboxError, OSError, ValueError) as exc:
            raise ToolFailed(f"{type(exc).__name__}: {exc}") from exc

    return reporting


@_failures_to_model
async def execute(ctx: RunContext[DeepAgentDeps], command: str, timeout: float = 120) -> str:
    """Run a shell command (sh -c) in the working directory and return its output and exit code.

    Args:
        command: The command line; pipes, redirects and && work.
        timeout: Seconds before the command is killed.
    """
    result = await ctx.deps.backend.aexecute(command, timeout=timeout, on_output=command_output.get())
    notes = [f"[exit code {result.exit_code}]"]
    if result.timed_out:
        notes.append(f"[killed after {timeout:g} s]")
    if result.truncated:
        notes.append("[output truncated]")
    return _clip(result.output) + "\n" + " ".join(notes)


@_failures_to_model
async def ls(ctx: RunContext[DeepAgentDeps], path: str = ".") -> str:
    """List a directory: one entry per line, directories ending in '/', files with their size.

    Args:
        path: The directory, relative to the working directory or absolute (e.g. /uploads).
    """
    entries = await ctx.deps.backend.alist_files(path)
    if not entries:
        return f"{path} is empty"
    return "\n".join(f"{e.name}/" if e.is_dir else f"{e.name}  ({e.size} bytes)" for e in entries)


@_failures_to_model
async def read_file(ctx: RunContext[DeepAgentDeps], path: str, offset: int = 0,
                    limit: int = 2000) -> str | ToolReturn:
    """Read a text file with line numbers, or look at an image (PNG, JPEG, GIF, WebP).

    Args:
        path: The file.
        offset: The first line to show, counting from 0.
        limit: How many lines to show at most.
    """
    data = await ctx.deps.backend.aread_file(path)
    media_type = _IMAGE_TYPES.get(PurePosixPath(path).suffix.lower())
    if media_type is not None:
        return ToolReturn(return_value=f"The image {path} ({len(data)} bytes) follows.",
                          content=[BinaryContent(data, media_type=media_type)])
    lines = data.decode("utf-8", errors="replace").splitlines()
    shown = lines[max(offset, 0):max(offset, 0) + max(limit, 1)]
    numbered = "\n".join(f"{number:6}\t{line}" for number, line in enumerate(shown, start=max(offset, 0) + 1))
    more = len(lines) - offset - len(shown)
    return _clip(numbered) + (f"\n[{more} more lines: read on with offset={offset + len(shown)}]" if more > 0 else "")


@_failures_to_model
async def read_upload(ctx: RunContext[DeepAgentDeps], name: str, offset: int = 0,
                      limit: int = 2000) -> str | ToolReturn:
    """Read a file the user uploaded, by its name in /uploads.

    Args:
        name: The file's name, e.g. data.csv.
        offset: The first line to show, counting from 0.
        limit: How many lines to show at most.
    """
    return await read_file(ctx, posixpath.join(UPLOADS_DIR, posixpath.basename(name)), offset, limit)


@_failures_to_model
async def write_file(ctx: RunContext[DeepAgentDeps], path: str, content: str) -> str:
    """Create or overwrite a file (missing directories are created).

    Args:
        path: The file.
        content: Its whole new content.
    """
    written = await ctx.deps.backend.awrite_file(path, content)
    return f"Wrote {len(content.encode())} bytes to {written}"


@_failures_to_model
async def edit_file(ctx: RunContext[DeepAgentDeps], path: str, old_text: str, new_text: str,
                    replace_all: bool = False) -> str:
    """Replace exact text in a file.

    Args:
        path: The file.
        old_text: The exact text to replace, with enough context to be unique.
        new_text: What replaces it.
        replace_all: Replace every occurrence instead of requiring exactly one.
    """
    text = (await ctx.deps.backend.aread_file(path)).decode()
    count = text.count(old_text) if old_text else 0
    if count == 0:
        raise ToolFailed(f"old_text was not found in {path}; read the file and copy the text exactly")
    if count > 1 and not replace_all:
        raise ToolFailed(f"old_text appears {count} times in {path}; include more context to make it "
                         "unique, or set replace_all=true")
    await ctx.deps.backend.awrite_file(path, text.replace(old_text, new_text))
    return f"Replaced {count if replace_all else 1} occurrence(s) in {path}"


@_failures_to_model
async def glob(ctx: RunContext[DeepAgentDeps], pattern: str, path: str = ".") -> str:
    """Find files by a glob pattern such as '**/*.py' or '*.csv', below a directory.

    Args:
        pattern: The pattern, matched against paths relative to ``path``.
        path: The directory to search.
    """
    listing = await ctx.deps.backend.aexecute(
        f"find {shlex.quote(path)} -type f -printf '%P\\n' 2>/dev/null | head -n 20000", timeout=60)
    matches = sorted(p for p in listing.stdout.splitlines() if _glob_match(p, pattern))
    return _clip("\n".join(matches)) if matches else f"no file below {path} matches {pattern}"


def _glob_match(relative: str, pattern: str) -> bool:
    """``**`` matches any number of directories; ``*`` and ``?`` stay within one."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.fullmatch(regex, relative) is not None


@_failures_to_model
async def grep(ctx: RunContext[DeepAgentDeps], pattern: str, path: str = ".", include: str | None = None) -> str:
    """Search file contents with an extended regular expression; prints file:line:text.

    Args:
        pattern: The regular expression (grep -E).
        path: A file or directory to search (recursively).
        include: Only files whose name matches this glob, e.g. '*.py'.
    """
    option = f"--include={shlex.quote(include)} " if include else ""
    result = await ctx.deps.backend.aexecute(
        f"grep -rnIE {option}-e {shlex.quote(pattern)} -- {shlex.quote(path)}", timeout=60)
    if result.exit_code == 1:
        return f"no match for {pattern} in {path}"
    if result.exit_code > 1:
        raise ToolFailed(result.stderr.strip() or f"grep failed with exit code {result.exit_code}")
    return _clip(result.stdout)


@_failures_to_model
async def expose_port(ctx: RunContext[DeepAgentDeps], port: int, path: str = "/") -> str:
    """Open a port of the sandbox to the user and check that it answers; gives the URL for the user.

    For a web app or API you started in the sandbox: start the server first, in the background (e.g.
    `nohup python -m uvicorn app:app --port 8000 > server.log 2>&1 &`). Works with the sandbox's
    network off. Answers with the URL and the status and start of the page fetched from it.

    Args:
        port: The port the server listens on inside the sandbox.
        path: The page to fetch, from the user's side, to check it (default /).
    """
    backend = ctx.deps.backend
    url = await backend.aexpose(port)
    token = next((item.token for item in backend.exposed if item.port == port), None)
    check = await asyncio.to_thread(_fetch, url.split("?")[0].rstrip("/") + "/" + path.lstrip("/"), token)
    return f"Port {port} of the sandbox is open at {url} (give the user this URL).\n{check}"


def _fetch(url: str, token: str | None) -> str:
    """One GET of ``url``, described for the model: status and the start of the body."""
    request = urllib.request.Request(url, headers={TOKEN_HEADER: token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, body = response.status, response.read(2000)
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read(2000)
    except OSError as exc:
        return f"GET {url} failed: {exc}"
    return f"GET {url} answered {status}:\n{body.decode(errors='replace')}"


def _environment(ctx: RunContext[DeepAgentDeps]) -> str:
    """The run's sandbox: its runtime and the files uploaded to it (made for each run)."""
    return "\n\n".join(filter(None, [runtime_section(ctx.deps), uploads_section(ctx.deps)]))


def sandbox_toolset() -> FunctionToolset[DeepAgentDeps]:
    """The toolset of a deep agent: every tool acts in ``ctx.deps.backend``.

    It carries its instructions: how to work in the sandbox, then the run's "Runtime Environment"
    and "Uploaded files" sections. Any agent given this toolset (``Agent(..., toolsets=[...])``,
    with ``deps_type=DeepAgentDeps``) tells its model about the sandbox.
    """
    tools: list[Any] = [execute, ls, read_file, read_upload, write_file, edit_file, glob, grep, expose_port]
    return FunctionToolset(tools, max_retries=3, instructions=[BASE_INSTRUCTIONS, _environment])
