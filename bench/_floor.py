"""The transport floor of a Cortex action: the same hops with no work on them.

An action through Cortex crosses, in each direction: client -> hub (a gRPC call over
mTLS), hub -> node (a message on the node's open mTLS stream) and node -> worker (a
frame on a pipe), every hop between two Python processes. This measures each hop bare -
an echo server that does nothing, with P-256 certificates like the hub's - so a
benchmark can show how much of an action's overhead no amount of work on the hub or the
node could remove: store writes, validation, audit and scheduling all come on top.

`python bench/_floor.py serve DIR` and `python bench/_floor.py pipe` are the echo ends
this module starts for itself (`measure_floor`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import sys
from pathlib import Path
from typing import Any

import grpc
from _common import timed
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_UNARY = "/floor.Echo/Unary"
_STREAM = "/floor.Echo/Stream"
_FRAME = struct.Struct(">I")
_PAYLOAD = b"x" * 200  # about an action's size: {"action": "eval", ...} and its answer


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        import ipaddress
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls(directory: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("floor-ca", ca_key, "floor-ca", ca_key, ca=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, "floor-ca", ca_key, ca=False)
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(_pem_key(key))


async def _serve(directory: Path) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def stream(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler("floor.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [((directory / "server.key").read_bytes(), (directory / "server.pem").read_bytes())],
        root_certificates=(directory / "ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _pipe_echo() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    while True:
        try:
            (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
        except asyncio.IncompleteReadError:
            return
        body = await reader.readexactly(size)
        writer.write(_FRAME.pack(size) + body)


async def measure_floor(n: int, directory: Path) -> dict[str, list[float]]:
    """Round trips (seconds) of each bare hop: gRPC unary, gRPC stream message, pipe."""
    make_tls(directory)
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "serve", str(directory), stdout=asyncio.subprocess.PIPE)
    pipe = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "pipe", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert server.stdout is not None
        assert pipe.stdin is not None
        assert pipe.stdout is not None
        port = int((await asyncio.wait_for(server.stdout.readline(), 30)).decode())
        creds = grpc.ssl_channel_credentials(
            root_certificates=(directory / "ca.pem").read_bytes(),
            private_key=(directory / "client.key").read_bytes(),
            certificate_chain=(directory / "client.pem").read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            unary = channel.unary_unary(_UNARY, request_serializer=None,
                                        response_deserializer=None)
            stream = channel.stream_stream(_STREAM, request_serializer=None,
                                           response_deserializer=None)()  # type: ignore[call-arg]
            call = stream.__aiter__()

            async def unary_once() -> None:
                await unary(_PAYLOAD)

            async def stream_once() -> None:
                await stream.write(_PAYLOAD)
                await call.__anext__()

            out = {"grpc_unary": await timed(n, unary_once, warmup=20),
                   "grpc_stream_message": await timed(n, stream_once, warmup=20)}
            await stream.done_writing()
        stdin, stdout = pipe.stdin, pipe.stdout

        async def pipe_once() -> None:
            stdin.write(_FRAME.pack(len(_PAYLOAD)) + _PAYLOAD)
            (size,) = _FRAME.unpack(await stdout.readexactly(_FRAME.size))
            await stdout.readexactly(size)

        out["pipe_frame"] = await timed(n, pipe_once, warmup=20)
        return out
    finally:
        for proc in (server, pipe):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(_serve(Path(sys.argv[2])))
    elif sys.argv[1] == "pipe":
        asyncio.run(_pipe_echo())
