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

from cortex._proto.cortex.v1 import admin_pb2, common_pb2
from cortex.errors import (
    Conflict,
    CortexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RemoteError,
    Unavailable,
)
from cortex.sdk._admin import Admin, NewApiToken, SyncAdmin
from cortex.sdk._attach import Attachment
from cortex.sdk._browser import (
    BrowserError,
    BrowserSession,
    SyncBrowserSession,
    artifacts_of,
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
    "Admin",
    "ApiToken",
    "Attachment",
    "BrowserError",
    "BrowserSession",
    "Client",
    "ClientConfig",
    "ConfigError",
    "ConfigOverrides",
    "Conflict",
    "CortexError",
    "File",
    "InvalidArgument",
    "JoinToken",
    "NewApiToken",
    "Node",
    "NodeLoad",
    "NodeState",
    "NotFound",
    "OutputCallback",
    "OutputStream",
    "PermissionDenied",
    "Pool",
    "Quota",
    "QuotaExceeded",
    "RemoteError",
    "Result",
    "SyncAdmin",
    "SyncAttachment",
    "SyncBrowserSession",
    "SyncClient",
    "Task",
    "TaskEvent",
    "TaskOptions",
    "TaskSpec",
    "TaskState",
    "Tenant",
    "Unavailable",
    "artifacts_of",
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
File = common_pb2.File                  # an artifact: name, size, sha256, media type, id
TaskSpec = common_pb2.TaskSpec
TaskEvent = common_pb2.TaskEvent
Node = common_pb2.Node
NodeLoad = common_pb2.NodeLoad
TaskState = common_pb2.TaskState        # TaskState.SUCCEEDED, TaskState.Name(task.state)
NodeState = common_pb2.NodeState
OutputStream = common_pb2.OutputStream
Tenant = admin_pb2.Tenant
Pool = admin_pb2.Pool
ApiToken = admin_pb2.ApiToken
Quota = admin_pb2.Quota
