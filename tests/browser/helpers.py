"""Driving the browser skill directly (no hub): one action = one call of `BrowserSkill`."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from cortex._proto.cortex.v1 import common_pb2
from cortex.core.states import State
from cortex.skills.browser import BrowserSkill


@dataclass
class Answer:
    state: State
    reason: str
    result: dict[str, Any]
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.splitlines()
                if line.startswith("{")]


async def act(skill: BrowserSkill, session: str, action: str, *, task_timeout_s: float = 60,
              **args: Any) -> Answer:
    """Run one action; the answer whatever its outcome."""
    spec = common_pb2.TaskSpec(skill="browser", session_id=session)
    spec.args.update({"action": action, **args})
    chunks: list[tuple[int, bytes]] = []
    run = await skill.start(task_id=f"t-{uuid.uuid4().hex[:8]}", attempt=1, spec=spec,
                            timeout_s=task_timeout_s, sink=lambda s, d: chunks.append((s, d)))
    outcome = await run.wait()
    out = b"".join(d for s, d in chunks if s == common_pb2.STDOUT).decode()
    err = b"".join(d for s, d in chunks if s == common_pb2.STDERR).decode()
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return Answer(outcome.state, outcome.reason, result, err)


async def ok(skill: BrowserSkill, session: str, action: str, **args: Any) -> dict[str, Any]:
    """Run one action that must succeed; its JSON result."""
    answer = await act(skill, session, action, **args)
    assert answer.state is State.SUCCEEDED, f"{action} {args}: {answer.reason}\n{answer.stderr}"
    return answer.result


async def fails(skill: BrowserSkill, session: str, action: str, **args: Any) -> str:
    """Run one action that must fail; its reason."""
    answer = await act(skill, session, action, **args)
    assert answer.state is State.FAILED, (
        f"{action} {args} did not fail: {answer.state} {answer.reason} {answer.result}")
    return answer.reason
