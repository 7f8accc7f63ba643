"""The built-in runtimes, and the registry that maps runtime names to configs."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .config import RuntimeConfig
from .errors import InvalidArgumentError, InvalidArgumentTypeError, UnknownRuntimeError

__all__ = ["BUILTIN_RUNTIMES", "get_runtime", "list_runtimes", "register_runtime", "resolve_runtime"]

_PYTHON_BASE = "python:3.12-slim"
_NODE_BASE = "node:20-slim"

BUILTIN_RUNTIMES: Mapping[str, RuntimeConfig] = MappingProxyType(
    {
        runtime.name: runtime
        for runtime in [
            RuntimeConfig(
                name="python-minimal",
                description="Clean Python 3.12 (3.11 on the air-gapped Debian base)",
                base_image=_PYTHON_BASE,
            ),
            RuntimeConfig(
                name="python-datascience",
                description="Python with pandas, numpy, matplotlib, scikit-learn, seaborn",
                base_image=_PYTHON_BASE,
                packages=["pandas", "numpy", "matplotlib", "scikit-learn", "seaborn"],
                # matplotlib must not look for a display, and must find a writable config dir.
                env_vars={"MPLBACKEND": "Agg"},
            ),
            RuntimeConfig(
                name="python-web",
                description="Python with FastAPI, SQLAlchemy, httpx, uvicorn",
                base_image=_PYTHON_BASE,
                packages=["fastapi", "sqlalchemy", "httpx", "uvicorn"],
            ),
            RuntimeConfig(
                name="node-minimal",
                description="Clean Node.js 20",
                base_image=_NODE_BASE,
            ),
            RuntimeConfig(
                name="node-react",
                description="Node.js 20 with TypeScript, Vite and React",
                base_image=_NODE_BASE,
                package_manager="npm",
                # Vite 7 is the newest line that runs on Node.js 20 without warnings.
                packages=["typescript", "vite@7", "react", "react-dom", "@types/react", "@types/react-dom"],
            ),
        ]
    }
)

_registered: dict[str, RuntimeConfig] = {}


def register_runtime(runtime: RuntimeConfig, *, replace: bool = False) -> RuntimeConfig:
    """Make ``runtime`` available by name, for ``DockerSandbox(runtime="name")`` and the CLI.

    Raises:
        InvalidArgumentError: the name is taken (by a built-in, or by another runtime unless ``replace``).
    """
    if runtime.name in BUILTIN_RUNTIMES:
        raise InvalidArgumentError(f"{runtime.name!r} is a built-in runtime; choose another name")
    if runtime.name in _registered and not replace and _registered[runtime.name] != runtime:
        raise InvalidArgumentError(
            f"a different runtime named {runtime.name!r} is already registered; "
            "choose another name, or pass replace=True")
    _registered[runtime.name] = runtime
    return runtime


def list_runtimes() -> dict[str, RuntimeConfig]:
    """All runtimes known by name: the built-in ones, then the registered ones."""
    return {**BUILTIN_RUNTIMES, **_registered}


def get_runtime(name: str) -> RuntimeConfig:
    """The runtime called ``name``.

    Raises:
        UnknownRuntimeError: no such runtime; the message lists the available ones.
    """
    runtimes = list_runtimes()
    try:
        return runtimes[name]
    except KeyError:
        raise UnknownRuntimeError(name, sorted(runtimes)) from None


def resolve_runtime(runtime: str | RuntimeConfig) -> RuntimeConfig:
    """Accept a runtime name or a config, as every public API that takes ``runtime=`` does."""
    if isinstance(runtime, RuntimeConfig):
        return runtime
    if isinstance(runtime, str):
        return get_runtime(runtime)
    raise InvalidArgumentTypeError(f"runtime must be a name or a RuntimeConfig, not {type(runtime).__name__}")
