"""What this machine offers, as the node reports it in its hello."""

from __future__ import annotations

import os

from cortex._proto.cortex.v1 import common_pb2 as pb

__all__ = ["count_gpus", "host_capacity"]


def host_capacity(*, slots: int, gpus: int, browser_sessions: int = 0) -> pb.Resources:
    cpus = os.cpu_count() or 1
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return pb.Resources(cpus=cpus, memory_mib=mem, slots=slots, gpus=gpus,
                        browser_sessions=browser_sessions)


def count_gpus() -> int:
    """NVIDIA GPUs by their device nodes (/dev/nvidia0, ...; not nvidiactl or -uvm)."""
    try:
        names = os.listdir("/dev")
    except OSError:
        return 0
    return sum(1 for n in names if n.startswith("nvidia") and n[6:].isdigit())
