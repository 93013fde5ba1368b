"""The node agent's configuration: one frozen, validated value built at startup."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cortex.core.addresses import parse_addresses
from cortex.errors import InvalidArgument

__all__ = ["NodeConfig"]


def _home() -> Path:
    return Path(os.environ.get("CORTEX_HOME") or Path.home() / ".cortex").expanduser()


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path = field(default_factory=lambda: _home() / "node")
    # host:port of the hub's client port, for enrolling; a comma-separated list of several
    # hubs or balancers is tried in order.
    hub: str = ""
    # The hub node port(s) to dial, overriding what enrollment stored (HOST:PORT[,...]);
    # several are tried in turn, moving on when a connection fails.
    node_address: str = ""
    token: str = ""                      # join token; needed only until enrolled
    name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    slots: int = 64                      # tasks run at once
    gpus: int | None = None              # GPUs to report; None = count /dev/nvidia<N>
    drain_grace_s: float = 30.0          # on SIGTERM, running tasks get this long to finish
    kill_grace_s: float = 2.0            # SIGTERM -> SIGKILL when a task is cancelled
    reconnect_max_s: float = 10.0        # backoff cap between reconnect attempts
    flush_interval_s: float = 0.002      # output batching window under load
    # A task's start is reported this long after it, or with its first output or its end
    # if sooner: a short task (a browser action) then costs the hub one report, not two.
    started_hold_s: float = 0.05
    max_message_bytes: int = 16 * 1024 * 1024
    use_cgroups: bool = True
    # Directories the `fs` skill (cortex cp / cortex fs) may touch; none = fs refused.
    fs_roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise InvalidArgument("node config: slots must be at least 1")
        for name in ("drain_grace_s", "kill_grace_s", "reconnect_max_s", "flush_interval_s",
                     "started_hold_s"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"node config: {name} must not be negative")
        if self.hub:
            parse_addresses(self.hub, what="node config: hub")
        if self.node_address:
            parse_addresses(self.node_address, what="node config: node_address")
        for root in self.fs_roots:
            if not os.path.isabs(root) or not os.path.isdir(root):
                raise InvalidArgument(f"node config: fs root {root!r} must be an absolute "
                                      "path of an existing directory")
