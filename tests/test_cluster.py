"""Sandboxes and sessions on a real 3-node Docker Swarm (issue 13); see tests/local_swarm.py.

The swarm starts once per run (about 10 s) and is torn down after, pass or fail. Run alone with
``scripts/test -m cluster``.
"""

from __future__ import annotations

import pytest

from pydantic_deep import DockerSandbox, SwarmCluster

from local_swarm import LocalSwarm

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(swarm: LocalSwarm) -> SwarmCluster:
    return SwarmCluster(swarm.manager.socket)


def test_sandboxes_spread_across_nodes_and_run_commands_and_files_on_workers(cluster: SwarmCluster) -> None:
    sandboxes = [DockerSandbox(cluster=cluster, memory="256m", cpus=0.25) for _ in range(3)]
    try:
        for sandbox in sandboxes:
            sandbox.start()
        assert sorted(s.node or "" for s in sandboxes) == ["node1", "node2", "node3"]
        for sandbox in sandboxes:
            result = sandbox.execute("id -u; echo $PWD")
            assert result.output.split() == ["1000", sandbox.work_dir], result
            sandbox.write_file("data.txt", f"on {sandbox.node}")
            assert sandbox.read_file("data.txt") == f"on {sandbox.node}".encode()
            assert [f.name for f in sandbox.list_files(".")] == ["data.txt"]
        worker = next(s for s in sandboxes if s.node != "node1")
        chunks: list[str] = []
        result = worker.execute("for i in 1 2 3; do echo $i; sleep 0.05; done",
                                on_output=lambda chunk: chunks.append(chunk.text))
        assert "".join(chunks) == result.output == "1\n2\n3\n"
        assert worker.has_python  # the supervisor channel, through the worker's own engine
        # No network: Swarm has no "none" network, so the task's link on the node's bridge is down.
        links = worker.execute("cd /sys/class/net && for l in *; do echo $l $(cat $l/operstate); done").output
        assert sorted(links.splitlines()) == ["eth0 down", "lo unknown"], links
        # The limits are the task's reservations: Swarm does not overcommit a node.
        service = cluster.client.services.get(worker.name)
        reservations = service.attrs["Spec"]["TaskTemplate"]["Resources"]["Reservations"]
        assert reservations == {"NanoCPUs": 250_000_000, "MemoryBytes": 256 * 2**20}
    finally:
        for sandbox in sandboxes:
            sandbox.stop()
    assert cluster.client.services.list(filters={"label": "pydantic-deep.managed=true"}) == []


def test_a_constraint_no_node_meets_fails_clearly_and_leaves_nothing() -> None:
    pass
