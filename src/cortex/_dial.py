"""Dialing a list of hubs, shared by the SDK and the node agent.

gRPC balances a channel over a static list of IP addresses (``ipv4:a:1,b:2``) but has no
target for several host names, so names are resolved here, once, when the channel opens
(a channel is reopened after failures, which picks up DNS changes). The TLS name checked
is always given separately (``grpc.ssl_target_name_override``), so dialing by IP is safe.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from cortex.core.addresses import split_host_port, static_target
from cortex.errors import InvalidArgument, Unavailable

__all__ = ["ROUND_ROBIN", "balanced_target", "channel_target"]

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""Service config that spreads calls over every reachable address of a channel."""


def channel_target(addresses: tuple[str, ...]) -> str:
    """One gRPC target for `addresses`; host names are resolved now when there are several."""
    target = static_target(addresses)
    if target is not None:
        return target
    v4: list[str] = []
    v6: list[str] = []
    for address in addresses:
        host, port = split_host_port(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unavailable(f"cannot resolve hub address {address}: {exc}") from exc
        fours = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        sixes = [i[4][0] for i in infos if i[0] == socket.AF_INET6]
        v4.append(f"{fours[0]}:{port}" if fours else "")
        v6.append(f"[{sixes[0]}]:{port}" if sixes else "")
    if all(v4):
        return "ipv4:" + ",".join(dict.fromkeys(v4))
    if all(v6):
        return "ipv6:" + ",".join(dict.fromkeys(v6))
    raise InvalidArgument(
        f"hub addresses {','.join(addresses)} mix IPv4-only and IPv6-only hosts: gRPC "
        "balances over one address family; list addresses of one family")


def balanced_target(addresses: tuple[str, ...]) -> tuple[str, list[tuple[str, Any]]]:
    """(target, extra channel options): round robin over every address when there are
    several, so calls go to the hubs that answer and skip the ones that do not."""
    if len(addresses) == 1:
        return addresses[0], []
    return channel_target(addresses), [("grpc.service_config", ROUND_ROBIN),
                                       ("grpc.enable_retries", 1)]
