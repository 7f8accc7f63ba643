"""Each ``package_manager`` against the real Docker engine: build a small runtime, use it in a sandbox.

The builds start from ``python:3.12-slim`` and ``node:20-slim``, which resolve to the air-gapped
Debian stand-ins where no container registry can be reached. Images are cached by content hash, so
only the first run of this file builds them.

crates.io cannot be reached here, so the cargo runtime installs a crate from the sources Debian
ships as ``librust-*-dev`` packages: its setup commands point cargo's ``crates-io`` source at
``/usr/share/cargo/registry``. xml-rs 0.8.3 has a binary (``xml-analyze``), no dependencies, and
builds in seconds with bookworm's rustc 1.63.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pydantic_deep import DockerSandbox, RuntimeConfig

# A source replacement in the builder's cargo home, which the cargo recipe keeps.
_CARGO_DEBIAN_SOURCE = (
    "mkdir -p ~/.cargo && printf '[source.crates-io]\\nreplace-with = \"debian\"\\n"
    "[source.debian]\\ndirectory = \"/usr/share/cargo/registry\"\\n' > ~/.cargo/config.toml"
)

CASES = [
    pytest.param(
        dict(base_image="python:3.12-slim", package_manager="pip", packages=["six==1.16.0"]),
        "python -c 'import six; print(six.__version__)'", "1.16.0", id="pip",
    ),
    pytest.param(
        dict(base_image="node:20-slim", package_manager="npm", packages=["is-number@7.0.0"]),
        "node -e \"console.log(require('is-number')(5))\"", "true", id="npm",
    ),
    pytest.param(
        dict(base_image="python:3.12-slim", package_manager="apt", packages=["jq"]),
        "jq --version", "jq-1.", id="apt",
    ),
    pytest.param(
        dict(
            base_image="python:3.12-slim", package_manager="cargo", packages=["xml-rs@0.8.3"],
            setup_commands=[
                "apt-get update",
                "apt-get install -y --no-install-recommends cargo librust-xml-rs-dev",
                _CARGO_DEBIAN_SOURCE,
            ],
        ),
        "command -v xml-analyze && echo '<a><b/></a>' | xml-analyze", "Elements: 2", id="cargo",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("options", "command", "expected"), CASES)
def test_package_manager_installs_into_runtime(options: dict, command: str, expected: str) -> None:
    manager = options["package_manager"]
    runtime = RuntimeConfig(name=f"test-pm-{manager}", **options)
    with DockerSandbox(runtime=runtime) as sandbox:
        result = sandbox.execute(command, timeout=60)
    assert result.exit_code == 0, result.output
    assert expected in result.stdout
    if manager == "cargo":
        assert "/usr/local/bin/xml-analyze" in result.stdout


@pytest.mark.parametrize("manager", ["pip", "npm", "apt", "cargo"])
@pytest.mark.parametrize("package", ["six; rm -rf /", "--index-url=http://x", "six $(id)", "six\nid"])
def test_package_with_shell_characters_is_rejected(manager: str, package: str) -> None:
    with pytest.raises(ValueError) as caught:
        RuntimeConfig(name="test-pm-bad", base_image="python:3.12-slim", package_manager=manager,
                      packages=["six", package])
    assert isinstance(caught.value, ValidationError)
    [error] = caught.value.errors()
    assert repr(package) in error["msg"] and manager in error["msg"]


@pytest.mark.parametrize("manager", ["pip", "npm", "apt", "cargo"])
def test_option_like_package_is_rejected(manager: str) -> None:
    with pytest.raises(ValueError, match="'--force'"):
        RuntimeConfig(name="test-pm-bad", base_image="python:3.12-slim", package_manager=manager,
                      packages=["--force"])
