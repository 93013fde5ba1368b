"""Two tenants on one hub, from the CLI as the README shows: tenants, pools, API tokens with
roles, a node joining a tenant's pool, quotas, and neither tenant seeing the other's work."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Cortex

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TRACEBACK = "Traceback (most recent call last)"


def as_(cortex: Cortex, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cortex.run("--token", token, *args)


def json_as(cortex: Cortex, token: str, *args: str) -> Any:
    at = args.index("--") if "--" in args else len(args)
    done = as_(cortex, token, *args[:at], "--json", *args[at:])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_tenants_share_a_hub_with_their_own_pools_tokens_and_quotas(
        cortex: Cortex, tmp_path: Path) -> None:
    """hub-admin creates acme and beta; acme's admin makes a pool and a join token, a node
    joins it and runs acme's tasks; beta sees none of it; quotas and token revocation hold."""
    cortex.ok("tenant", "create", "acme", "--quota", "tasks=2")
    cortex.ok("tenant", "create", "beta")
    acme = cortex.ok("token", "create", "acme-admin", "--role", "admin", "--tenant", "acme"
                     ).stdout.strip()
    beta = cortex.ok("token", "create", "beta-admin", "--role", "admin", "--tenant", "beta"
                     ).stdout.strip()
    assert acme.startswith("ctk_")
    tenants = {t["id"]: t for t in cortex.json("tenant", "ls")}
    assert tenants["acme"]["quota"]["tasks"] == 2

    assert as_(cortex, acme, "pool", "create", "gpu").returncode == 0
    join = as_(cortex, acme, "token", "join", "--pool", "gpu", "--ttl", "10m")
    assert join.returncode == 0, join.stderr
    with (tmp_path / "node.log").open("wb") as out:
        cortex.popen("node", "--hub", cortex.address, "--token", join.stdout.strip(),
                     "--data-dir", str(tmp_path / "acme-node"), "--name", "acme-gpu",
                     stdout=out, stderr=subprocess.STDOUT)

    def acme_node_online() -> list[dict[str, Any]] | None:
        nodes = [n for n in json_as(cortex, acme, "nodes", "ls")
                 if n.get("state") == "ONLINE"]
        return nodes or None

    [node] = cortex.eventually(acme_node_online, "acme's node online")
    assert (node["name"], node["pool"]) == ("acme-gpu", "gpu")

    ran = as_(cortex, acme, "run", "--pool", "gpu", "--", "echo", "from-acme")
    assert (ran.returncode, ran.stdout) == (0, "from-acme\n"), ran.stderr
    [task] = json_as(cortex, acme, "tasks", "ls")

    # beta sees nothing of acme's
    assert json_as(cortex, beta, "nodes", "ls") == []
    assert json_as(cortex, beta, "tasks", "ls") == []
    hidden = as_(cortex, beta, "tasks", "get", task["id"])
    assert hidden.returncode == 1
    assert "no task" in hidden.stderr
    assert TRACEBACK not in hidden.stderr
    refused = as_(cortex, beta, "pool", "ls", "--tenant", "acme")
    assert refused.returncode == 1
    assert "only a hub-admin" in refused.stderr

    # quota: a task over the whole quota is refused at once, naming it
    over = as_(cortex, acme, "run", "--cpus", "1", "--", "true")
    assert over.returncode == 0, over.stderr   # no cpus quota: fine
    show = json_as(cortex, acme, "tenant", "show")
    assert (show["id"], show["quota"]["tasks"]) == ("acme", 2)
    cortex.ok("tenant", "limits", "acme", "--quota", "tasks=2", "--quota", "cpus=1")
    big = as_(cortex, acme, "run", "--cpus", "2", "--", "true")
    assert big.returncode == 1
    assert "quota on its own (CPU cores: the task needs 2, the quota is 1)" in big.stderr

    # tokens: an agent token works until revoked; an agent may not make join tokens
    agent = as_(cortex, acme, "token", "create", "ci", "--role", "agent").stdout.strip()
    assert as_(cortex, agent, "run", "--", "true").returncode == 0
    no_join = as_(cortex, agent, "token", "join")
    assert no_join.returncode == 1
    assert "role 'agent' may not call CreateJoinToken" in no_join.stderr
    listed = {t["name"]: t for t in json_as(cortex, acme, "token", "ls")}
    assert set(listed) == {"acme-admin", "ci"}
    assert as_(cortex, acme, "token", "revoke", listed["ci"]["id"]).returncode == 0
    gone = as_(cortex, agent, "tasks", "ls")
    assert gone.returncode == 1
    assert "revoked" in gone.stderr
