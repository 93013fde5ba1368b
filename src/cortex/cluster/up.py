"""``cortex cluster up``: N hubs on one Postgres, HAProxy in front, one node, on one machine.

For trying a cluster out, not for production (docs/operations.md shows that): every
process is a child of this one, in its own session (Ctrl-C in the terminal reaches only
this process, which then stops the children in order: node, balancer, hubs), and asks the
kernel to SIGTERM it should this process die first, so nothing outlives ``cluster up``.

Layout under ``$CORTEX_HOME/cluster``::

    ca/                the CA every hub shares (--ca-dir)
    artifacts/         the blob directory every hub shares (--artifact-dir)
    hub-N/             each hub's data dir (admin token, serving certificate) and hub.log
    node/              the local node's identity and journal, node.log
    haproxy.cfg        the balancer's configuration (regenerated at each start)
    haproxy.log        its output

and ``$CORTEX_HOME/client.json`` names the balancer, so ``cortex run -- echo hi`` from
another shell goes through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cortex.cluster.haproxy import Backend, Balancer, render
from cortex.core.addresses import split_host_port
from cortex.errors import InvalidArgument, Unavailable

__all__ = ["DEFAULT_SCHEMA", "DEFAULT_STORE", "Cluster", "ClusterSpec", "schema_url"]

DEFAULT_STORE = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_SCHEMA = "cortex_cluster"
_READY = re.compile(r"cortex hub ready: clients ([^\s,]+), nodes ([^\s,]+)(?:, http (\S+))?")
_CONNECTED = re.compile(r"connected to hub (\S+) as (\S+)")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What `cortex cluster up` starts; validated on construction."""

    home: Path
    hubs: int = 3
    store: str = DEFAULT_STORE            # a Postgres URL (several hubs need Postgres)
    schema: str = DEFAULT_SCHEMA          # created if missing; "" = the URL's own search_path
    host: str = "127.0.0.1"               # where the balancer listens
    port: int = 7443                      # balancer: clients and enrollment
    node_port: int = 7444                 # balancer: nodes
    node: bool = True                     # start one local node
    fs_roots: tuple[str, ...] = ()
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.hubs <= 16:
            raise InvalidArgument(f"--hubs {self.hubs}: give 1 to 16 hubs")
        if not self.store.startswith(("postgresql://", "postgres://")):
            raise InvalidArgument(
                f"--store {self.store!r}: a cluster needs PostgreSQL (postgresql://…); "
                "SQLite serves one hub (`cortex up`)")
        if self.schema and not _SCHEMA.fullmatch(self.schema):
            raise InvalidArgument(f"--schema {self.schema!r}: use lowercase letters, digits "
                                  "and '_' (at most 63), not starting with a digit")
        for name in ("port", "node_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise InvalidArgument(f"--{name.replace('_', '-')}: a TCP port (0-65535)")

    @property
    def root(self) -> Path:
        return self.home / "cluster"


def schema_url(store: str, schema: str) -> str:
    """`store` with its search_path set to `schema` (created if missing)."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(store, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(schema)))
    except psycopg.Error as exc:
        raise Unavailable(f"cannot prepare schema {schema} at {store}: {exc}") from exc
    return f"{store}{'&' if '?' in store else '?'}options=-csearch_path%3D{schema}"


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    spec: ClusterSpec
    client_address: str = ""
    node_address: str = ""
    hubs: list[Backend] = field(default_factory=list)
    node_id: str = ""
    _children: list[_Child] = field(default_factory=list)

    # -- starting -----------------------------------------------------------------------
    def start(self) -> None:
        """Start everything; on any failure, stop what started and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        spec = self.spec
        root = spec.root
        for sub in ("ca", "artifacts"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        store = schema_url(spec.store, spec.schema) if spec.schema else spec.store
        port = spec.port or _free_port(spec.host)
        node_port = spec.node_port or _free_port(spec.host)
        public = _public_host(spec.host)
        self.client_address = _join(public, port)
        self.node_address = _join(public, node_port)
        for n in range(1, spec.hubs + 1):   # one at a time: the first migrates the schema
            self.hubs.append(self._start_hub(f"hub-{n}", store))
        cfg = root / "haproxy.cfg"
        cfg.write_text(render(Balancer(client_bind=_join(spec.host, port),
                                       node_bind=_join(spec.host, node_port),
                                       backends=tuple(self.hubs))))
        self._spawn("haproxy", ["haproxy", "-db", "-f", str(cfg)], root / "haproxy.log")
        _wait_listening(_join(public, port), self._children[-1], spec.ready_timeout_s)
        _wait_listening(_join(public, node_port), self._children[-1], spec.ready_timeout_s)
        self._write_client_file()
        if spec.node:
            self._start_node()

    def _start_hub(self, name: str, store: str) -> Backend:
        root = self.spec.root
        data = root / name
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        child = self._spawn(name, [
            sys.executable, "-m", "cortex", "hub", "--host", "127.0.0.1", "--port", "0",
            "--node-port", "0", "--http-port", "0", "--data-dir", str(data), "--store", store,
            "--hub-id", name, "--ca-dir", str(root / "ca"),
            "--artifact-dir", str(root / "artifacts"),
            "--public-address", self.client_address,
            "--public-node-address", self.node_address,
            "--client-file", str(data / "client.json")], data / "hub.log")
        m = _wait_for_line(child, _READY, self.spec.ready_timeout_s)
        return Backend(name=name, host="127.0.0.1", port=_port(m.group(1)),
                       node_port=_port(m.group(2)), http_port=_port(m.group(3)))

    def _write_client_file(self) -> None:
        root = self.spec.root
        body = {"address": self.client_address, "node_address": self.node_address,
                "ca_file": str((root / "ca" / "bundle.pem").resolve()),
                "token_file": str((root / "hub-1" / "admin.token").resolve())}
        path = self.spec.home / "client.json"
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(body, indent=2) + "\n")
        tmp.replace(path)

    def _start_node(self) -> None:
        data = self.spec.root / "node"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = [sys.executable, "-m", "cortex", "node", "--hub", self.client_address,
               "--node-address", self.node_address, "--data-dir", str(data),
               "--name", "local"]
        if not (data / "identity.json").exists():
            cmd += ["--token", self._join_token()]
        for r in self.spec.fs_roots:
            cmd += ["--fs-root", r]
        log = data / "node.log"
        offset = log.stat().st_size if log.exists() else 0
        child = self._spawn("node", cmd, log)
        m = _wait_for_line(child, _CONNECTED, self.spec.ready_timeout_s, offset=offset)
        self.node_id = m.group(2)

    def _join_token(self) -> str:
        from cortex.sdk import ClientConfig, SyncClient

        root = self.spec.root
        config = ClientConfig(address=self.client_address,
                              token=(root / "hub-1" / "admin.token").read_text().strip(),
                              ca_pem=(root / "ca" / "bundle.pem").read_bytes())
        with SyncClient(config) as client:
            return client.create_join_token(ttl=600.0).token

    def _spawn(self, name: str, cmd: list[str], log: Path) -> _Child:
        out: IO[bytes]
        with open(log, "ab") as out:  # the child holds its own copy of the descriptor
            # Our own argv (this interpreter, haproxy), never user-given text.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,  # noqa: S603
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        child = _Child(name, proc, log)
        self._children.append(child)
        return child

    # -- stopping -----------------------------------------------------------------------
    def stop(self) -> None:
        """Node first (it drains), then the balancer, then the hubs; SIGKILL what stays."""
        order = sorted(self._children, key=lambda c: {"node": 0, "haproxy": 1}.get(c.name, 2))
        for group in ([c for c in order if c.name == "node"],
                      [c for c in order if c.name == "haproxy"],
                      [c for c in order if c.name.startswith("hub-")]):
            for c in group:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
            for c in group:
                try:
                    c.proc.wait(self.spec.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
        self._children.clear()

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]

    def dead(self) -> list[str]:
        """Names of children that exited on their own (the caller reports and stops)."""
        return [f"{c.name} (exit {c.proc.returncode}, see {c.log})"
                for c in self._children if c.proc.poll() is not None]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when `cluster up` dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_for_line(child: _Child, pattern: re.Pattern[str], timeout: float, *,
                   offset: int = 0) -> re.Match[str]:
    """The first line of the child's log (past `offset`) matching `pattern`."""
    deadline = time.monotonic() + timeout
    while True:
        text = child.log.read_bytes()[offset:].decode(errors="replace")
        if m := pattern.search(text):
            return m
        if child.proc.poll() is not None:
            raise Unavailable(f"{child.name} exited (status {child.proc.returncode}) before "
                              f"it was ready; its log {child.log} ends:\n{_tail(text)}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{child.name} not ready within {timeout:g} s; its log "
                              f"{child.log} ends:\n{_tail(text)}")
        time.sleep(0.1)


def _wait_listening(address: str, child: _Child, timeout: float) -> None:
    host, port = split_host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if child.proc.poll() is not None:
            raise Unavailable(f"{child.name} exited (status {child.proc.returncode}); see "
                              f"{child.log}:\n{_tail(child.log.read_text(errors='replace'))}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{child.name} does not listen on {address} after {timeout:g} s")
        time.sleep(0.1)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _port(address: str | None) -> int:
    return int(address.rpartition(":")[2]) if address else 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _public_host(host: str) -> str:
    """What clients dial to reach a balancer listening on `host`."""
    return socket.gethostname() if host in ("0.0.0.0", "::") else host  # noqa: S104


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
