"""Shared helpers for benchmarks: percentiles, process RSS, JSON output."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil


async def timed(n: int, action: Callable[[], Awaitable[Any]], *,
                warmup: int = 1) -> list[float]:
    """Seconds each of `n` sequential awaits of `action` took, after `warmup` untimed."""
    for _ in range(warmup):
        await action()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await action()
        out.append(time.perf_counter() - start)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(values) * 1000, 3),
        "n": len(values),
    }


def rss_mib(pid: int, *, children: bool = False) -> float:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    if children:
        total += sum(c.memory_info().rss for c in proc.children(recursive=True))
    return round(total / (1024 * 1024), 1)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def emit(name: str, result: dict[str, Any]) -> None:
    out = {"benchmark": name, **result}
    text = json.dumps(out, indent=2)
    print(text)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(text + "\n")
    sys.stdout.flush()
