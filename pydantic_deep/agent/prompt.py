"""The system prompt sections a deep agent gets from its sandbox: the runtime, and the uploads."""

from __future__ import annotations

from .deps import DeepAgentDeps

__all__ = ["BASE_INSTRUCTIONS", "runtime_section", "uploads_section"]

BASE_INSTRUCTIONS = """\
You work inside an isolated sandbox container through your tools: run shell commands, list, read,
write, edit, glob and grep files. Paths are relative to the working directory unless absolute;
files the user gave you are in /uploads. Check your work by running it."""


def runtime_section(deps: DeepAgentDeps) -> str:
    """The "Runtime Environment" section: name, description, work dir, network, packages.

    Built from the runtime's config alone: environment variable values never enter the prompt.
    """
    sandbox = deps.backend
    runtime = sandbox.runtime
    lines = ["## Runtime Environment", "", f"**Name:** {runtime.name}"]
    if runtime.description:
        lines.append(f"**Description:** {runtime.description}")
    if isinstance(sandbox.network, tuple):
        network = (f"only {', '.join(sandbox.network) or 'no host'}, through an HTTP(S) proxy (set in the "
                   "environment); other hosts are refused")
    else:
        network = "on" if sandbox.network else "off (package installs will fail)"
    lines += [f"**Working directory:** {sandbox.work_dir}", f"**Network:** {network}"]
    if runtime.packages:
        lines += ["", f"**Pre-installed packages** (use directly without installation, {runtime.package_manager}):"]
        lines += [f"- {package}" for package in runtime.packages]
    return "\n".join(lines)


def uploads_section(deps: DeepAgentDeps) -> str:
    """The "Uploaded files" section: each file's path, size and type; empty without uploads."""
    if not deps.uploads:
        return ""
    lines = ["## Uploaded files", ""]
    for upload in sorted(deps.uploads.values(), key=lambda upload: upload.name):
        lines.append(f"- {upload.path} ({_size(upload.size)}, {upload.media_type})")
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if count < 1024 or unit == "MB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")
