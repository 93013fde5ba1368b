"""Worker processes: one long-lived process per stateful session, serving one skill.

``python -m cortex.workers SKILL`` decides at start which skill it serves, then answers
calls from its node over a framed pipe (proto/cortex/v1/worker.proto). A crash takes down
that session only; the node (cortex.skills.worker) notices and starts a fresh worker.

A worker imports nothing heavy - no grpc, asyncio, cortex.node or cortex.hub - so that it
starts fast and a session's namespace holds only what its user imported.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf import struct_pb2

from cortex._proto.cortex.v1 import worker_pb2

__all__ = ["SKILLS", "Handler"]

# Skill name -> module whose `open_handler()` returns the skill's Handler.
SKILLS: dict[str, str] = {
    "pyeval": "cortex.workers.pyeval",
    "browser": "cortex.workers.browser",
}


class Handler(Protocol):
    """One skill's session state. Called on the worker's main thread, one call at a time.

    Its output goes to sys.stdout / sys.stderr, which stream to the node as the call's
    Output. KeyboardInterrupt means the node cancelled the call; a handler either lets it
    propagate or answers CANCELLED itself.
    """

    def handle(self, args: struct_pb2.Struct) -> worker_pb2.WorkerResult: ...
