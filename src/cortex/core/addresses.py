"""Hub address lists: ``HOST:PORT[,HOST:PORT...]`` parsed and turned into gRPC targets.

Clients and nodes may name several hubs (or several balancers); every place that takes a
hub address accepts such a list. Values in, values out: no name resolution happens here
(the SDK and the node resolve host names at the edge and call `static_target` again).
"""

from __future__ import annotations

import ipaddress

from cortex.errors import InvalidArgument

__all__ = ["MAX_ADDRESSES", "join_addresses", "parse_addresses", "split_host_port",
           "static_target"]

MAX_ADDRESSES = 64
_EXAMPLE = "e.g. 10.0.0.1:7443 or hub-a:7443,hub-b:7443 or [::1]:7443"


def split_host_port(address: str, *, what: str = "hub address") -> tuple[str, int]:
    """(host, port) of one ``HOST:PORT``; IPv6 hosts come back without brackets."""
    host, sep, port = address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not bare or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{what} {address!r} is not HOST:PORT ({_EXAMPLE})")
    if ":" in bare and bare == host:
        raise InvalidArgument(f"{what} {address!r}: put an IPv6 address in brackets, "
                              f"as in [{bare}]:{port}")
    if any(c.isspace() or c in "/,@" for c in bare):
        raise InvalidArgument(f"{what} {address!r}: the host may not contain spaces, "
                              f"'/', ',' or '@' ({_EXAMPLE})")
    return bare, int(port)


def parse_addresses(text: str, *, what: str = "hub address") -> tuple[str, ...]:
    """The addresses of a comma-separated list, validated, in order, without duplicates."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise InvalidArgument(f"{what} {text!r} is not HOST:PORT ({_EXAMPLE})")
    if any(not item for item in items):
        raise InvalidArgument(f"{what} list {text!r} has an empty entry: separate "
                              "HOST:PORT entries with single commas")
    if len(items) > MAX_ADDRESSES:
        raise InvalidArgument(f"{what} list has {len(items)} entries; at most "
                              f"{MAX_ADDRESSES}")
    out: list[str] = []
    for item in items:
        host, port = split_host_port(item, what=what)
        canonical = _join(host, port)
        if canonical in out:
            raise InvalidArgument(f"{what} list {text!r} names {item} twice")
        out.append(canonical)
    return tuple(out)


def join_addresses(addresses: tuple[str, ...] | list[str]) -> str:
    """The inverse of `parse_addresses`: what config files and flags hold."""
    return ",".join(addresses)


def static_target(addresses: tuple[str, ...]) -> str | None:
    """A gRPC target naming every address, for a channel that balances over all of them.

    One address: itself (gRPC resolves a name by DNS). Several IP literals of one family:
    ``ipv4:a:1,b:2`` / ``ipv6:[a]:1,[b]:2``. None when several addresses include host names
    or mix families: the caller resolves the names first (gRPC has no multi-name target).
    """
    if len(addresses) == 1:
        return addresses[0]
    families = set()
    for address in addresses:
        host, _ = split_host_port(address)
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            return None
    if families == {4}:
        return "ipv4:" + ",".join(addresses)
    if families == {6}:
        return "ipv6:" + ",".join(addresses)
    return None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
