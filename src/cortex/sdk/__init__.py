"""The Cortex Python SDK: an async `Client`, its blocking twin `SyncClient`.

    async with Client() as client:               # config from flags > env > client.json
        result = await client.run(argv=["uname", "-a"], labels={"os": "linux"})
        print(result.exit_code, result.stdout.decode())

    with SyncClient() as client:
        for event in client.watch(task_id):
            ...

Every error is a `cortex.errors.CortexError`; grpc errors are translated, never leaked.
"""

from __future__ import annotations

from cortex._proto.cortex.v1 import common_pb2
from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
)
from cortex.sdk._attach import Attachment
from cortex.sdk._browser import (
    BrowserError,
    BrowserSession,
    SyncBrowserSession,
    list_browser_sessions,
)
from cortex.sdk._client import TERMINAL_STATES, Client, JoinToken, OutputCallback, Result
from cortex.sdk._config import ClientConfig, ConfigError, ConfigOverrides
from cortex.sdk._specs import (
    TaskOptions,
    build_spec,
    parse_duration,
    parse_env,
    parse_labels,
    parse_node_state,
    parse_task_state,
)
from cortex.sdk._sync import SyncAttachment, SyncClient

__all__ = [
    "TERMINAL_STATES",
    "Attachment",
    "BrowserError",
    "BrowserSession",
    "Client",
    "ClientConfig",
    "ConfigError",
    "ConfigOverrides",
    "Conflict",
    "CortexError",
    "InvalidArgument",
    "JoinToken",
    "Node",
    "NodeLoad",
    "NodeState",
    "NotFound",
    "OutputCallback",
    "OutputStream",
    "PermissionDenied",
    "RemoteError",
    "Result",
    "SyncAttachment",
    "SyncBrowserSession",
    "SyncClient",
    "Task",
    "TaskEvent",
    "TaskOptions",
    "TaskSpec",
    "TaskState",
    "Unavailable",
    "build_spec",
    "list_browser_sessions",
    "parse_duration",
    "parse_env",
    "parse_labels",
    "parse_node_state",
    "parse_task_state",
]

# Protocol messages users hold; re-exported so nobody imports cortex._proto.
Task = common_pb2.Task
TaskSpec = common_pb2.TaskSpec
TaskEvent = common_pb2.TaskEvent
Node = common_pb2.Node
NodeLoad = common_pb2.NodeLoad
TaskState = common_pb2.TaskState        # TaskState.SUCCEEDED, TaskState.Name(task.state)
NodeState = common_pb2.NodeState
OutputStream = common_pb2.OutputStream
