"""The deep agent's real loop, driven by a scripted FunctionModel (no network), in real containers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from helpers import poll_until
from pydantic_ai import Agent, BinaryContent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_deep import (
    ContainerGoneError,
    DeepAgentDeps,
    DockerSandbox,
    ImageBuildError,
    RuntimeConfig,
    SessionManager,
    create_deep_agent,
)
from pydantic_deep.agent.prompt import BASE_INSTRUCTIONS
from pydantic_deep.agent.tools import sandbox_toolset
from pydantic_deep.engine.client import docker_client

pytestmark = pytest.mark.anyio


class Script:
    """A model that makes the given tool calls, one step per request, and records what comes back."""

    def __init__(self, *steps: list[tuple[str, dict]]) -> None:
        self.steps = list(steps)
        self.seen: list[tuple[str, str, str]] = []  # (tool, outcome, content) of each tool result
        self.instructions: list[str] = []
        self.images: list[BinaryContent] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.instructions.append(info.instructions or "")
        for part in messages[-1].parts if isinstance(messages[-1], ModelRequest) else []:
            if isinstance(part, ToolReturnPart):
                self.seen.append((part.tool_name, part.outcome, str(part.content)))
            elif hasattr(part, "tool_name") and part.part_kind == "retry-prompt":
                self.seen.append((part.tool_name, "failed", str(part.content)))
            elif isinstance(part, UserPromptPart) and not isinstance(part.content, str):
                self.images += [item for item in part.content if isinstance(item, BinaryContent)]
        if not self.steps:
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart(name, json.dumps(args)) for name, args in self.steps.pop(0)])

    def result_of(self, tool: str) -> list[tuple[str, str]]:
        return [(outcome, content) for name, outcome, content in self.seen if name == tool]


@pytest.fixture(scope="module")
def datascience() -> Iterator[DockerSandbox]:
    with DockerSandbox("python-datascience") as sandbox:
        yield sandbox


SUM_COMMAND = "python -c \"import pandas as pd; print(pd.read_csv('/uploads/data.csv').v.sum())\""


async def test_agent_lists_uploads_and_runs_pandas(datascience: DockerSandbox) -> None:
    deps = DeepAgentDeps(backend=datascience)
    deps.upload_file("data.csv", "k,v\na,1\nb,2\n")
    script = Script(
        [("ls", {"path": "/uploads"})],
        [("execute", {"command": SUM_COMMAND})],
        [("read_upload", {"name": "data.csv", "offset": 1, "limit": 1})],
    )
    result = await create_deep_agent(FunctionModel(script)).run("Sum column v of /uploads/data.csv", deps=deps)
    assert result.output == "done"
    assert script.result_of("ls") == [("success", "data.csv  (12 bytes)")]
    assert script.result_of("execute") == [("success", "3\n\n[exit code 0]")]
    assert script.result_of("read_upload")[0][1] == "     2\ta,1\n[1 more lines: read on with offset=2]"


async def test_agent_writes_edits_greps_and_recovers_from_a_tool_error(datascience: DockerSandbox) -> None:
    script = Script(
        [("write_file", {"path": "notes/todo.md", "content": "buy milk\nbuy bread\n"})],
        [("edit_file", {"path": "notes/todo.md", "old_text": "buy cheese", "new_text": "x"})],  # absent
        [("edit_file", {"path": "notes/todo.md", "old_text": "buy", "new_text": "get"})],  # ambiguous
        [("edit_file", {"path": "notes/todo.md", "old_text": "buy bread", "new_text": "bake bread"})],
        [("grep", {"pattern": "b(ake|uy)", "path": "notes"}), ("glob", {"pattern": "**/*.md"})],
        [("read_file", {"path": "/etc/passwd"})],  # outside the sandbox
    )
    deps = DeepAgentDeps(backend=datascience)
    result = await create_deep_agent(FunctionModel(script)).run("Keep a todo list", deps=deps)
    assert result.output == "done"  # the failures did not end the run
    edits = script.result_of("edit_file")
    assert edits[0][0] == "failed" and "old_text was not found in notes/todo.md" in edits[0][1]
    assert edits[1][0] == "failed" and "appears 2 times" in edits[1][1]
    assert edits[2] == ("success", "Replaced 1 occurrence(s) in notes/todo.md")
    assert script.result_of("grep") == [("success", "notes/todo.md:1:buy milk\nnotes/todo.md:2:bake bread\n")]
    assert script.result_of("glob") == [("success", "notes/todo.md")]
    [(outcome, message)] = script.result_of("read_file")
    assert outcome == "failed" and "outside the sandbox" in message
    assert datascience.read_file("notes/todo.md") == b"buy milk\nbake bread\n"


async def test_a_saved_plot_goes_back_to_the_model_as_an_image(datascience: DockerSandbox) -> None:
    plot = "import matplotlib.pyplot as plt; plt.plot([1, 2, 3]); plt.savefig('plot.png')"
    script = Script([("execute", {"command": f'python -c "{plot}"'})], [("read_file", {"path": "plot.png"})])
    await create_deep_agent(FunctionModel(script)).run("Plot", deps=DeepAgentDeps(backend=datascience))
    assert [(image.media_type, image.data[:4]) for image in script.images] == [("image/png", b"\x89PNG")]


async def test_system_prompt_names_the_runtime_and_the_uploads_never_env_values() -> None:
    runtime = RuntimeConfig(name="test-prompt", description="Analysis box", base_image="python:3.12-slim",
                            packages=["six"], env_vars={"API_TOKEN": "s3cr3t-value"}, work_dir="/srv/work")
    with DockerSandbox(runtime) as sandbox:
        deps = DeepAgentDeps(backend=sandbox)
        deps.upload_files({"report.csv": "a\n" * 600, "../../etc/notes.txt": "hi"})
        script = Script()
        await create_deep_agent(FunctionModel(script)).run("hello", deps=deps)
    [prompt] = script.instructions
    assert "## Runtime Environment\n\n**Name:** test-prompt\n**Description:** Analysis box\n" in prompt
    assert "**Working directory:** /srv/work\n**Network:** off" in prompt
    assert "**Pre-installed packages** (use directly without installation, pip):\n- six" in prompt
    assert "## Uploaded files\n\n- /uploads/notes.txt (2 bytes, text/plain)\n" \
           "- /uploads/report.csv (1.2 KB, text/csv)" in prompt
    assert "s3cr3t-value" not in prompt and "API_TOKEN" not in prompt


async def test_the_toolset_brings_its_instructions_to_any_agent() -> None:
    deps = DeepAgentDeps(backend=DockerSandbox("python-minimal"))  # the prompt needs no container
    plain, deep = Script(), Script()
    await Agent(FunctionModel(plain), deps_type=DeepAgentDeps, toolsets=[sandbox_toolset()]).run("hi", deps=deps)
    await create_deep_agent(FunctionModel(deep), instructions="Answer in French.").run("hi", deps=deps)
    [reused], [own] = plain.instructions, deep.instructions
    for prompt in (reused, own):
        assert prompt.count(BASE_INSTRUCTIONS) == 1 and prompt.count("## Runtime Environment") == 1
        assert "**Name:** python-minimal" in prompt
    assert own == "Answer in French.\n\n" + reused


async def test_a_container_removed_from_outside_ends_the_run_with_its_error() -> None:
    with DockerSandbox("python-minimal") as sandbox:
        docker_client().api.remove_container(sandbox.container_id, force=True)
        poll_until(lambda: not sandbox.alive, "the sandbox notices its container is gone")
        script = Script([("execute", {"command": "echo hi"})])
        with pytest.raises(ContainerGoneError, match="is gone"):
            await create_deep_agent(FunctionModel(script)).run("hi", deps=DeepAgentDeps(backend=sandbox))
    assert script.seen == []  # the model never saw it as a tool failure to retry


async def test_an_image_that_fails_to_build_ends_the_run_with_its_error() -> None:
    broken = RuntimeConfig(name=f"agent-broken-{uuid.uuid4().hex[:8]}", base_image="python:3.12-slim",
                           setup_commands=["echo the-agent-reason >&2; exit 3"])
    script = Script([("ls", {"path": "."})])  # the first tool starts the sandbox
    with pytest.raises(ImageBuildError, match="the-agent-reason"):
        await create_deep_agent(FunctionModel(script)).run("hi", deps=DeepAgentDeps(backend=DockerSandbox(broken)))
    assert script.seen == []


NO_ENGINE_RUN = """
import asyncio, json
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel
from pydantic_deep import DeepAgentDeps, DockerSandbox, DockerUnavailableError, create_deep_agent

def model(messages, info):
    if len(messages) > 1:
        return ModelResponse(parts=[TextPart("the model saw: " + str(messages[-1].parts[0].content))])
    return ModelResponse(parts=[ToolCallPart("execute", json.dumps({"command": "echo hi"}))])

try:
    asyncio.run(create_deep_agent(FunctionModel(model)).run("hi", deps=DeepAgentDeps(backend=DockerSandbox())))
except DockerUnavailableError as exc:
    print("ended:", exc)
"""


def test_a_lost_engine_ends_the_run_with_its_error() -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run([sys.executable, "-c", NO_ENGINE_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ended: Cannot reach the Docker engine"), done.stdout


def test_builtin_runtime_section_matches_the_guide() -> None:
    from pydantic_deep.agent.prompt import runtime_section

    section = runtime_section(DeepAgentDeps(backend=DockerSandbox("python-datascience")))
    assert section.startswith(
        "## Runtime Environment\n\n**Name:** python-datascience\n"
        "**Description:** Python with pandas, numpy, matplotlib, scikit-learn, seaborn\n"
        "**Working directory:** /workspace\n")
    assert section.endswith("- pandas\n- numpy\n- matplotlib\n- scikit-learn\n- seaborn")


async def test_upload_names_are_sanitised_and_sizes_limited(datascience: DockerSandbox) -> None:
    deps = DeepAgentDeps(backend=datascience, max_upload_bytes=10)
    assert deps.upload_file("../../../etc/passwd", b"x").path == "/uploads/passwd"
    assert (await deps.aupload_file("dir\\win.txt", "y")).path == "/uploads/win.txt"
    with pytest.raises(ValueError, match="no file name"):
        deps.upload_file("../", b"x")
    with pytest.raises(ValueError, match="control characters"):
        deps.upload_file("a\nb", b"x")
    with pytest.raises(ValueError, match="limited to 10 bytes"):
        await deps.aupload_files({"ok.txt": b"1", "big.bin": b"0" * 11})
    assert not datascience.exists("/uploads/ok.txt")  # all were checked before any was written


async def test_without_a_model_the_run_says_how_to_name_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYDANTIC_DEEP_MODEL", raising=False)
    agent = create_deep_agent()  # builds without a model and without the network
    with pytest.raises(UserError, match="set PYDANTIC_DEEP_MODEL"):
        await agent.run("hi", deps=DeepAgentDeps(backend=DockerSandbox("python-minimal")))


async def test_model_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDANTIC_DEEP_MODEL", "test")
    agent = create_deep_agent()
    with DockerSandbox("python-minimal") as sandbox:
        result = await agent.run("hi", deps=DeepAgentDeps(backend=sandbox))
    assert result.output  # Pydantic AI's TestModel called every tool and answered


async def test_three_users_at_once_each_see_only_their_files() -> None:
    manager = SessionManager("python-minimal", name="test-agents")
    agent = create_deep_agent(FunctionModel(lambda messages, info: _list_uploads(messages)))
    try:
        async def serve(user: str) -> str:
            deps = DeepAgentDeps(backend=await manager.get_or_create(user))
            deps.upload_file(f"{user}.csv", user)
            return (await agent.run("What is uploaded?", deps=deps)).output

        outputs = await asyncio.gather(*(serve(user) for user in ("alice", "bob", "charlie")))
    finally:
        await manager.shutdown(keep_files=False)
    assert outputs == ["alice.csv  (5 bytes)", "bob.csv  (3 bytes)", "charlie.csv  (7 bytes)"]


def _list_uploads(messages: list[ModelMessage]) -> ModelResponse:
    last = messages[-1]
    returns = [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
    if returns:
        return ModelResponse(parts=[TextPart(str(returns[0].content))])
    return ModelResponse(parts=[ToolCallPart("ls", json.dumps({"path": "/uploads"}))])
