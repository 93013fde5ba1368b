"""Certificate lifecycle benchmark: what renewal costs the hub and the node.

Figures, each with its baseline from the same run:
- `Renew` over an existing mTLS channel (the hub signs a CSR and records the certificate)
  vs a gRPC health check on the same channel: p50/p99 and their ratio;
- renewals/s the hub sustains with 32 in flight (a fleet renewing at once);
- the node's key + CSR in a spawned child process (what keeps the X.509 toolkit out of
  the agent) vs the same work in-process: mean and ratio.

Run: `.venv/bin/python bench/bench_pki.py [--quick]`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, summary_ms, timed

from cortex._proto.cortex.v1 import pki_pb2, pki_pb2_grpc
from cortex.node import _certtool
from cortex.node.renewal import in_child
from cortex.testing import running_hub, running_node

HUB_SERVER_NAME = "cortex-hub"


async def main(quick: bool) -> None:
    n = 50 if quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        async with running_hub(Path(tmp) / "hub", http_port=-1) as hub, \
                running_node(hub, Path(tmp) / "n1") as node:
            ident = node._id
            creds = grpc.ssl_channel_credentials(ident.ca_pem, ident.key_pem, ident.cert_pem)
            async with grpc.aio.secure_channel(hub.node_address, creds, options=[
                    ("grpc.ssl_target_name_override", HUB_SERVER_NAME)]) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                certs = pki_pb2_grpc.NodeCertServiceStub(channel)
                _, csr = _certtool.new_key_and_csr("bench")
                request = pki_pb2.RenewRequest(csr_pem=csr)
                await health.Check(health_pb2.HealthCheckRequest())  # warm the channel
                baseline = await timed(n, lambda: health.Check(health_pb2.HealthCheckRequest()))
                renew = await timed(n, lambda: certs.Renew(request))
                start = time.perf_counter()
                sem = asyncio.Semaphore(32)

                async def one() -> None:
                    async with sem:
                        await certs.Renew(request)

                await asyncio.gather(*(one() for _ in range(n)))
                rate = n / (time.perf_counter() - start)
    spawns = 3 if quick else 10
    child = await timed(spawns, lambda: in_child("new_key_and_csr", "bench"))
    local = await timed(spawns, lambda: asyncio.to_thread(_certtool.new_key_and_csr, "bench"))
    r, b = summary_ms(renew), summary_ms(baseline)
    c, lo = summary_ms(child), summary_ms(local)
    emit("pki", {
        "renew": r, "health_check_baseline": b,
        "renew_vs_health_p50_ratio": round(r["p50_ms"] / b["p50_ms"], 2),
        "renewals_per_s_32_in_flight": round(rate, 1),
        "key_csr_in_child": c, "key_csr_in_process_baseline": lo,
        "child_vs_in_process_mean_ratio": round(c["mean_ms"] / lo["mean_ms"], 1),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
