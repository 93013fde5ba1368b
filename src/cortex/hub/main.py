"""Running a hub in the foreground until a signal, with two-phase shutdown."""

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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"cortex hub ready: clients {hub.address}, nodes {hub.node_address}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await hub.close()
