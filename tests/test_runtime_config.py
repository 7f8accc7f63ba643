"""RuntimeConfig validation and the runtime registry: clear errors for bad input, no Docker needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pydantic_deep import BUILTIN_RUNTIMES, RuntimeConfig, UnknownRuntimeError, get_runtime, register_runtime


def make(**fields: object) -> RuntimeConfig:
    return RuntimeConfig(**{"name": "t", "base_image": "python:3.12-slim", **fields})


def test_builtin_runtimes_are_the_documented_five() -> None:
    assert list(BUILTIN_RUNTIMES) == [
        "python-minimal", "python-datascience", "python-web", "node-minimal", "node-react"]
    assert BUILTIN_RUNTIMES["python-datascience"].packages == [
        "pandas", "numpy", "matplotlib", "scikit-learn", "seaborn"]
    assert BUILTIN_RUNTIMES["python-datascience"].description == (
        "Python with pandas, numpy, matplotlib, scikit-learn, seaborn")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base_image": None}, "exactly one of 'image'"),
        ({"image": "busybox"}, "exactly one of 'image'"),
        ({"base_image": None, "image": "busybox", "packages": ["six"]}, "need 'base_image'"),
        ({"packages": ["six; rm -rf /"]}, "'six; rm -rf /' is not a valid pip package"),
        ({"packages": ["--index-url=http://evil"]}, "is not a valid pip package"),
        ({"packages": ["pandas==2.2 ; python_version>'3'"]}, "is not a valid pip package"),
        ({"packages": ["left-pad && id"], "package_manager": "npm"}, "is not a valid npm package"),
        ({"packages": ["curl|sh"], "package_manager": "apt"}, "is not a valid apt package"),
        ({"packages": ["ripgrep`id`"], "package_manager": "cargo"}, "is not a valid cargo package"),
        ({"package_manager": "conda"}, "package_manager"),
        ({"setup_commands": ["apt-get update\nrm -rf /"]}, "contains a newline"),
        ({"setup_commands": ["  "]}, "empty command"),
        ({"work_dir": "workspace"}, "must be an absolute path"),
        ({"work_dir": "/workspace/../etc"}, "normalized"),
        ({"work_dir": "/etc/app"}, "system directory"),
        ({"work_dir": "/"}, "normalized absolute path"),
        ({"env_vars": {"1BAD": "x"}}, "environment variable name '1BAD' is invalid"),
        ({"env_vars": {"A-B": "x"}}, "environment variable name 'A-B' is invalid"),
        ({"name": "bad name"}, "runtime name 'bad name'"),
        ({"base_image": "python:3.12 slim"}, "not a valid image reference"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_fields_get_a_clear_error(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=None) as caught:
        make(**fields)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("manager", "package"),
    [("pip", "pandas"), ("pip", "scikit-learn>=1.3,<2"), ("pip", "uvicorn[standard]==0.30.1"),
     ("npm", "@types/react"), ("npm", "vite@7"), ("npm", "react@^18.2.0"),
     ("apt", "g++"), ("apt", "libssl-dev=3.0.11-1~deb12u2"), ("cargo", "ripgrep@14.1.0")],
)
def test_valid_packages_are_accepted(manager: str, package: str) -> None:
    assert make(package_manager=manager, packages=[package]).packages == [package]


def test_setup_command_may_use_shell_syntax() -> None:
    runtime = make(setup_commands=["apt-get update && apt-get install -y git || true"])
    assert runtime.setup_commands[0].endswith("|| true")


def test_unknown_runtime_lists_the_available_ones() -> None:
    with pytest.raises(UnknownRuntimeError) as caught:
        get_runtime("python-datascinece")
    assert str(caught.value).startswith("Unknown runtime 'python-datascinece'. Available runtimes: ")
    assert "python-datascience" in str(caught.value) and "node-react" in str(caught.value)


def test_registered_runtime_is_found_by_name() -> None:
    runtime = register_runtime(make(name="registered-for-test"))
    assert get_runtime("registered-for-test") is runtime
    with pytest.raises(ValueError, match="built-in runtime"):
        register_runtime(make(name="python-minimal"))
    with pytest.raises(ValueError, match="already registered"):
        register_runtime(make(name="registered-for-test", packages=["six"]))


def test_config_is_immutable() -> None:
    with pytest.raises(ValidationError):
        BUILTIN_RUNTIMES["python-minimal"].packages = ["six"]  # type: ignore[misc]


def test_renders_as_a_table_in_notebooks_without_env_values() -> None:
    runtime = RuntimeConfig(name="ml", base_image="python:3.12-slim", packages=["numpy<3"],
                            env_vars={"API_TOKEN": "secret-value"})
    page = runtime._repr_html_()
    assert "<caption" in page and "numpy&lt;3" in page and "API_TOKEN" in page and "secret-value" not in page
