"""A runtime's description: :class:`RuntimeConfig`, the first link of config → image → container."""

from __future__ import annotations

import posixpath
import re
from typing import Literal, Self

from docker.errors import DockerException
from docker.utils import parse_bytes
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._html import field_table
from .arguments import checked_text
from .errors import InvalidArgumentError, shown
from .hosts import checked_host_patterns
from .paths import TOOLS_DIR, UPLOADS_DIR

__all__ = ["DEFAULT_DISK_SIZE", "PackageManager", "RuntimeConfig", "disk_size_bytes"]

DEFAULT_DISK_SIZE = "10g"
"""What a sandbox may write to the host's disk, all paths together, unless told otherwise: big enough
for a data-science stack and its data, small enough that one runaway sandbox cannot fill a host."""
_MIN_DISK_SIZE = 16 * 1024 ** 2  # ext4's own tables need a few MB


def disk_size_bytes(size: str | None) -> int | None:
    """``disk_size`` in bytes (``None`` stays ``None``).

    Raises:
        ValueError: not a size in Docker's notation (``"512m"``, ``"10g"``) of at least 16 MB.
    """
    if size is None:
        return None
    try:
        value = parse_bytes(size)
    except DockerException:
        value = -1
    if isinstance(size, bool) or not isinstance(size, str) or value < _MIN_DISK_SIZE:
        raise ValueError(f"disk_size must be a size like '10g' of at least '16m', or None, not {size!r}")
    return int(value)

PackageManager = Literal["pip", "npm", "apt", "cargo"]

# What each package manager accepts as one package: a name and an optional version pin. Nothing
# else, so a package can never smuggle a shell word, an option or a second line into a build.
_PACKAGE_PATTERNS: dict[str, re.Pattern[str]] = {
    "pip": re.compile(
        r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"  # name
        r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"  # [extras]
        r"(?:(?:===|==|!=|~=|>=|<=|<|>)[A-Za-z0-9.*+!_-]+"
        r"(?:,(?:===|==|!=|~=|>=|<=|<|>)[A-Za-z0-9.*+!_-]+)*)?"  # version specifiers
    ),
    "npm": re.compile(r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(?:@[A-Za-z0-9.^~<>=*+_-]+)?"),
    # A trailing "-" would tell apt-get to remove the package.
    "apt": re.compile(r"[a-z0-9][a-z0-9+.-]*[a-z0-9+](?:=[A-Za-z0-9.+:~-]+)?"),
    "cargo": re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:@[A-Za-z0-9.^~<>=*+_-]+)?"),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Docker's image reference grammar (github.com/distribution/reference): [domain[:port]/]path[:tag][@digest].
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"  # no IPv6: Docker 20.10 has none
_REPOSITORY = re.compile(rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_IMAGE_REF = re.compile(
    rf"(?P<repository>{_REPOSITORY.pattern})"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@(?:sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}))?"  # digest
)
_MAX_REPOSITORY = 255
_WORK_DIR = re.compile(r"(/[A-Za-z0-9._-]+)+")
# Directories the container's own system lives in: a work dir there would be shadowed or break it.
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/run", "/sbin", "/sys", "/tmp", "/usr", "/var", UPLOADS_DIR)


def _normalized_repository(repository: str) -> str:
    """``repository`` as the engine names it, registry included (``python`` is
    ``docker.io/library/python``): the length limit applies to that."""
    first, slash, rest = repository.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        return repository  # the first component names a registry
    return f"docker.io/{repository}" if slash else f"docker.io/library/{repository}"


class RuntimeConfig(BaseModel):
    """A pre-configured execution environment for a sandbox.

    Either names a pre-built ``image``, or a ``base_image`` that pydantic_deep builds upon by running
    ``setup_commands`` and installing ``packages`` with ``package_manager``. Built images are tagged
    by a hash of what changes the build, so an unchanged runtime is built once and reused.

    Example:
        ```python
        RuntimeConfig(
            name="ml-env",
            base_image="python:3.12-slim",
            packages=["torch", "transformers"],
            env_vars={"TOKENIZERS_PARALLELISM": "false"},
        )
        ```

    Attributes:
        name: Unique identifier; letters, digits, ``.``, ``_`` and ``-``.
        description: Human-readable description, shown to agents and in notebooks.
        image: A pre-built image to run as is.
        base_image: An image to build upon (``python:3.12-slim`` resolves to an air-gapped Debian
            equivalent when it cannot be pulled).
        packages: Packages installed at build time, with optional version pins.
        package_manager: ``pip``, ``npm`` (installed globally and linked as ``/node_modules``, so
            every directory finds them), ``apt`` or ``cargo`` (binaries into ``/usr/local/bin``).
        setup_commands: Shell commands run as root at build time, before packages are installed.
        env_vars: Environment variables set in the running container (not baked into the image).
        work_dir: Absolute path of the working directory, owned by the sandbox user.
        network: Whether containers of this runtime get network access (builds always have it):
            ``True``, ``False``, or a list of host patterns (``["pypi.org", "*.example.com"]``)
            that are all they reach, through the egress proxy (see :class:`DockerSandbox`).
        cache_image: Reuse a previously built image with the same content hash.
        disk_size: What a sandbox of this runtime may write to the host's disk, all paths together
            (Docker's notation, at least ``"16m"``), unless the sandbox is given its own
            ``disk_size``; ``None`` caps nothing. On a cluster the default means no disk, and
            another size is refused. See :class:`DockerSandbox`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    image: str | None = None
    base_image: str | None = None
    packages: list[str] = Field(default_factory=list)
    package_manager: PackageManager = "pip"
    setup_commands: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)
    work_dir: str = "/workspace"
    network: bool | list[str] = False
    cache_image: bool = True
    disk_size: str | None = DEFAULT_DISK_SIZE

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"runtime name {shown(value)} must be 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("image", "base_image")
    @classmethod
    def _check_image_ref(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _IMAGE_REF.fullmatch(value)
        if match is None or len(_normalized_repository(match["repository"])) > _MAX_REPOSITORY:
            raise ValueError(
                f"{shown(value)} is not a valid image reference: [registry/]name[:tag][@digest], with a "
                f"lowercase name of at most {_MAX_REPOSITORY} characters (e.g. 'python:3.12-slim')"
            )
        return value

    def _repr_html_(self) -> str:
        rows: dict[str, object] = {"Name": self.name, "Description": self.description or "-"}
        if self.image is not None:
            rows["Image"] = self.image
        else:
            rows["Base image"] = self.base_image
            rows[f"Packages ({self.package_manager})"] = ", ".join(self.packages) or "-"
            rows["Setup commands"] = len(self.setup_commands)
        rows["Env vars"] = ", ".join(self.env_vars) or "-"  # names only: values may be secrets
        rows["Work dir"] = self.work_dir
        rows["Network"] = (", ".join(self.network) or "no host" if isinstance(self.network, list)
                           else "on" if self.network else "off")
        rows["Disk"] = f"at most {self.disk_size}" if self.disk_size else "not capped"
        return field_table("RuntimeConfig", rows)

    @field_validator("network", mode="before")
    @classmethod
    def _check_network(cls, value: object) -> object:
        if isinstance(value, bool):
            return value
        if isinstance(value, (list, tuple, str)):
            try:
                return list(checked_host_patterns(value))  # type: ignore[arg-type]
            except InvalidArgumentError as exc:
                raise ValueError(str(exc)) from None
        raise ValueError(f"network must be True, False or a list of host patterns, not {type(value).__name__}")

    @field_validator("disk_size")
    @classmethod
    def _check_disk_size(cls, value: str | None) -> str | None:
        disk_size_bytes(value)
        return value

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str) -> str:
        return checked_text(value, "description")  # it goes into container labels, as UTF-8

    @field_validator("setup_commands")
    @classmethod
    def _check_setup_commands(cls, commands: list[str]) -> list[str]:
        for command in commands:
            if not command.strip():
                raise ValueError("setup_commands may not contain an empty command")
            if any(char in command for char in "\n\r"):
                raise ValueError(
                    f"setup command {shown(command)} contains a newline: give each command as its own list item"
                )
            checked_text(command, "setup command")
        return commands

    @field_validator("env_vars")
    @classmethod
    def _check_env_vars(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(
                    f"environment variable name {shown(key)} is invalid: use letters, digits and '_', "
                    "not starting with a digit"
                )
            checked_text(value, f"environment variable {key}")
        return env

    @field_validator("work_dir")
    @classmethod
    def _check_work_dir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"work_dir {shown(value)} must be an absolute path")
        if not _WORK_DIR.fullmatch(value) or posixpath.normpath(value) != value or "/.." in value:
            raise ValueError(
                f"work_dir {shown(value)} must be a normalized absolute path of letters, digits, "
                "'.', '_' and '-'"
            )
        if any(value == d or value.startswith(d + "/") for d in _SYSTEM_DIRS):
            raise ValueError(f"work_dir {shown(value)} is inside a system directory; use e.g. /workspace")
        if value == TOOLS_DIR or value.startswith(TOOLS_DIR + "/") or TOOLS_DIR.startswith(value + "/"):
            raise ValueError(
                f"work_dir {shown(value)} would hold or hide {TOOLS_DIR}, where pydantic_deep keeps its tools")
        return value

    @model_validator(mode="after")
    def _check_image_source(self) -> Self:
        if (self.image is None) == (self.base_image is None):
            raise ValueError("give exactly one of 'image' (pre-built) or 'base_image' (to build upon)")
        if self.image is not None and (self.packages or self.setup_commands):
            raise ValueError("'packages' and 'setup_commands' need 'base_image'; 'image' is run as is")
        pattern = _PACKAGE_PATTERNS[self.package_manager]
        for package in self.packages:
            if not pattern.fullmatch(package):
                raise ValueError(
                    f"{shown(package)} is not a valid {self.package_manager} package: give a name with an "
                    "optional version pin, without spaces, options or shell characters"
                )
        return self
