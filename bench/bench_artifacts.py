"""Artifact benchmark (issue #5): a real hub process, the node's mTLS artifact client.

Figures, each with its baseline from the same run:
- upload and download throughput of an N GiB file over loopback mTLS (the node's
  `NodeArtifacts`, i.e. the path task outputs and `cortex cp` take) vs a plain TLS socket
  copy of the same file to/from a child process doing the same disk + sha256 + fsync work:
  ratio must be >= 0.5 (aim 0.6);
- hub CPU seconds per GiB uploaded, vs the TLS receiver's;
- hub RSS growth during the upload (must stay <= 64 MiB);
- resume: bytes re-sent after the connection is cut at 50 % (client bytes handed to
  gRPC before the cut minus the hub's committed size it resumed from);
- the round trip verifies byte for byte (sha256 of the downloaded copy).

Run: `.venv/bin/python bench/bench_artifacts.py [--size-gib 5] [--pin]`; prints JSON and
writes bench/results/artifacts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psutil
from _common import cpu_seconds, emit, rss_mib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cortex import _transfer
from cortex.node.artifacts import NodeArtifacts
from cortex.node.config import NodeConfig
from cortex.node.main import ensure_identity
from cortex.sdk import Client, ClientConfig
from cortex.testing import HubProcess

GIB = 1024**3
MIB = 1024**2

# The baseline receiver/sender: plain TLS, 1 MiB recv/sendall, sha256 + write + fsync.
TLS_PEER = r"""
import hashlib, os, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
while True:
    raw, _ = srv.accept()
    conn = ctx.wrap_socket(raw, server_side=True)
    f = conn.makefile("rb")
    op, arg = f.readline().decode().split()
    if op == "PUT":
        left, h = int(arg), hashlib.sha256()
        with open(sys.argv[3], "wb") as out:
            while left:
                block = f.read(min(left, 1 << 20))
                h.update(block)
                out.write(block)
                left -= len(block)
            out.flush()
            os.fsync(out.fileno())
        conn.sendall(h.hexdigest().encode() + b"\n")
    else:
        with open(arg, "rb") as src:
            while block := src.read(1 << 20):
                conn.sendall(block)
    f.close()
    conn.close()
"""


def generate(path: Path, size: int) -> str:
    block = bytearray(hashlib.sha256(b"bench").digest() * (MIB // 32))
    h = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // MIB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
            h.update(block)
    return h.hexdigest()


def sha256(path: Path) -> str:
    return _transfer.sha256_file(path)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_path, cert_path = tmp / "tls.key", tmp / "tls.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TlsPeer:
    def __init__(self, tmp: Path, pin: int | None) -> None:
        key, cert = self_signed(tmp)
        self.sink = tmp / "tls-received.bin"
        self.proc = subprocess.Popen([sys.executable, "-c", TLS_PEER, str(cert), str(key),
                                      str(self.sink)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        if pin is not None:
            os.sched_setaffinity(self.proc.pid, {pin})
        self.ctx = ssl.create_default_context(cafile=str(cert))
        self.ctx.check_hostname = False

    def _connect(self) -> ssl.SSLSocket:
        import socket
        raw = socket.create_connection(("127.0.0.1", self.port))
        return self.ctx.wrap_socket(raw)

    def put(self, path: Path) -> tuple[float, float, str]:
        """Seconds, receiver CPU seconds, digest the receiver computed."""
        cpu0 = cpu_seconds(self.proc.pid)
        t0 = time.perf_counter()
        with self._connect() as conn, path.open("rb") as f:
            conn.sendall(f"PUT {path.stat().st_size}\n".encode())
            while block := f.read(MIB):
                conn.sendall(block)
            digest = conn.makefile("rb").readline().decode().strip()
        return time.perf_counter() - t0, cpu_seconds(self.proc.pid) - cpu0, digest

    def get(self, path: Path, dest: Path) -> float:
        """Seconds to receive `path` into `dest` with sha256 + fsync on this side."""
        t0 = time.perf_counter()
        h = hashlib.sha256()
        left = path.stat().st_size
        with self._connect() as conn, dest.open("wb") as out:
            conn.sendall(f"GET {path}\n".encode())
            while left:
                block = conn.recv(min(left, MIB))
                if not block:
                    raise ConnectionError("the TLS peer closed early")
                h.update(block)
                out.write(block)
                left -= len(block)
            out.flush()
            os.fsync(out.fileno())
        return time.perf_counter() - t0

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class CuttingProxy:
    """TCP proxy that resets its first connection once `cut_after` bytes went upstream."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port, self.cut_after, self.cuts = target_port, cut_after, 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        cut, sent = self.cuts == 0, 0

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            nonlocal sent
            try:
                while data := await r.read(1 << 16):
                    if up:
                        sent += len(data)
                        if cut and sent > self.cut_after:
                            self.cuts += 1
                            raise ConnectionResetError
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                for x in (w, writer, up_w):
                    x.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False))


async def rss_sampler(pid: int, box: list[float], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        box.append(proc.memory_info().rss / MIB)
        await asyncio.sleep(0.1)


async def measure(tmp: Path, size: int, pin: bool) -> dict[str, Any]:
    hub = HubProcess(tmp / "hub")
    hub.start()
    assert hub.proc is not None
    hub_cpu = 0 if pin else None
    if pin:
        os.sched_setaffinity(hub.proc.pid, {0})
        os.sched_setaffinity(0, {1})
    peer = TlsPeer(tmp, hub_cpu)
    try:
        ca = (tmp / "hub" / "ca" / "ca.pem").read_bytes()
        cfg = ClientConfig(address=hub.address, token=hub.token, ca_pem=ca)
        async with Client(cfg) as client:
            token = (await client.create_join_token(ttl=600)).token
        ident = await asyncio.to_thread(ensure_identity, NodeConfig(
            data_dir=tmp / "node", hub=hub.address, token=token, name="bench"))
        artifacts = NodeArtifacts(ident)

        src = tmp / "src.bin"
        digest = await asyncio.to_thread(generate, src, size)
        warm = tmp / "warm.bin"
        await asyncio.to_thread(generate, warm, 64 * MIB)
        await artifacts.upload_file(warm, name="warm")

        tls_up_s, tls_cpu, tls_digest = await asyncio.to_thread(peer.put, src)
        assert tls_digest == digest
        peer.sink.unlink()

        samples: list[float] = []
        stop = asyncio.Event()
        base_rss = rss_mib(hub.proc.pid)
        sampler = asyncio.create_task(rss_sampler(hub.proc.pid, samples, stop))
        cpu0 = cpu_seconds(hub.proc.pid)
        t0 = time.perf_counter()
        file = await artifacts.upload_file(src, name="big.bin")
        up_s = time.perf_counter() - t0
        hub_cpu_s = cpu_seconds(hub.proc.pid) - cpu0
        stop.set()
        await sampler
        assert file.sha256 == digest

        tls_down_s = await asyncio.to_thread(peer.get, src, tmp / "tls-copy.bin")
        (tmp / "tls-copy.bin").unlink()
        t0 = time.perf_counter()
        back = await artifacts.download(file.artifact_id, tmp / "back.bin")
        down_s = time.perf_counter() - t0
        byte_exact = await asyncio.to_thread(sha256, back) == digest
        back.unlink()

        resume = await measure_resume(ident, tmp, hub.node_port)
        gib = size / GIB
        return {
            "size_gib": round(gib, 2),
            "pinned": pin,
            "upload": {"mtls_MBps": round(size / up_s / 1e6, 1),
                       "tls_socket_MBps": round(size / tls_up_s / 1e6, 1),
                       "ratio": round(tls_up_s / up_s, 2),
                       "note": "mTLS time includes the client's sha256 pass before sending"},
            "download": {"mtls_MBps": round(size / down_s / 1e6, 1),
                         "tls_socket_MBps": round(size / tls_down_s / 1e6, 1),
                         "ratio": round(tls_down_s / down_s, 2)},
            "hub_cpu_s_per_gib": round(hub_cpu_s / gib, 2),
            "tls_receiver_cpu_s_per_gib": round(tls_cpu / gib, 2),
            "hub_rss_mib": {"before": base_rss, "peak": round(max(samples), 1),
                            "growth": round(max(samples) - base_rss, 1)},
            "round_trip_byte_exact": byte_exact,
            "resume": resume,
        }
    finally:
        peer.close()
        hub.kill()


async def measure_resume(ident: Any, tmp: Path, node_port: int) -> dict[str, Any]:
    """Cut an upload at 50 % through a proxy; how many bytes the client sends again."""
    import dataclasses

    size = 256 * MIB
    src = tmp / "resume.bin"
    await asyncio.to_thread(generate, src, size)
    proxy = CuttingProxy(node_port, cut_after=size // 2)
    port = await proxy.start()
    via = dataclasses.replace(ident, node_address=f"127.0.0.1:{port}")
    offsets: list[int] = []
    file = await NodeArtifacts(via).upload_file(src, name="resume.bin",
                                                progress=lambda d, t: offsets.append(d))
    assert proxy.server is not None
    proxy.server.close()
    drops = [i for i in range(1, len(offsets)) if offsets[i] < offsets[i - 1]]
    if not drops:
        return {"cuts": proxy.cuts, "note": "the cut did not interrupt the upload"}
    i = drops[0]
    sent_before, resumed_at = offsets[i - 1], offsets[i] - 64 * 1024
    return {"file_mib": size // MIB, "cut_at_mib": round(size / 2 / MIB),
            "client_sent_before_cut_mib": round(sent_before / MIB, 2),
            "hub_committed_mib": round(resumed_at / MIB, 2),
            "resent_bytes": sent_before - resumed_at,
            "resent_chunks_64k": round((sent_before - resumed_at) / 65536, 1),
            "verified": file.sha256 == await asyncio.to_thread(sha256, src)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=5.0)
    parser.add_argument("--pin", action="store_true",
                        help="hub/peer on CPU 0, this process on CPU 1 (steadier figures)")
    parser.add_argument("--dir", default=None, help="scratch directory (needs ~4x size)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cortex-bench-art-", dir=args.dir) as tmp:
        result = asyncio.run(measure(Path(tmp), int(args.size_gib * GIB) // MIB * MIB,
                                     args.pin))
    emit("artifacts", result)


if __name__ == "__main__":
    main()
