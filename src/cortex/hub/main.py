"""Running a hub in the foreground until a signal, with two-phase shutdown.

The first SIGINT/SIGTERM stops intake and lets in-flight calls finish within the grace
period; a second one cuts the grace short.
"""

from __future__ import annotations

import asyncio
import signal

from cortex.hub.config import HubConfig
from cortex.hub.server import Hub

__all__ = ["run_hub"]


async def run_hub(config: HubConfig, *, ready: asyncio.Event | None = None,
                  stop: asyncio.Event | None = None) -> None:
    hub = Hub(config)
    await hub.start()
    stop = stop or asyncio.Event()
    closing: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if closing is not None:
            closing.cancel()  # second signal: stop waiting for in-flight calls
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    http = f", http {hub.http_address}" if hub.http_address else ""
    print(f"cortex hub ready: clients {hub.address}, nodes {hub.node_address}{http}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        closing = asyncio.create_task(hub.close())
        try:
            await closing
        except asyncio.CancelledError:
            if not closing.cancelled():
                raise
            await hub.close(grace=0)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
