"""Prometheus text exposition format 0.0.4: metric families in, text out. No I/O.

Hand-written rather than `prometheus_client`, whose default registry is process-global
(two hubs in one process, as in tests, would share and collide). The rules kept here:
names and label names are checked, label values and HELP text are escaped, every family
has HELP and TYPE lines and its samples together, and a family repeats no label set.
See https://prometheus.io/docs/instrumenting/exposition_formats/.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CONTENT_TYPE", "Family", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The sample name suffixes each type may add to its family's name.
_SUFFIXES = {"gauge": ("",), "counter": ("",), "histogram": ("_bucket", "_sum", "_count")}

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(slots=True)
class Family:
    """One metric: its name, type, help, and samples keyed by (suffix, labels)."""

    name: str
    kind: Kind
    help: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r} is not a Prometheus name")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")

    def add(self, value: float, labels: Mapping[str, str] | None = None, *,
            suffix: str = "") -> None:
        """Set one sample; the same labels given twice is a bug, not a sum."""
        if suffix not in _SUFFIXES[self.kind]:
            raise ValueError(f"{self.kind} {self.name} has no sample suffix {suffix!r}")
        pairs = tuple(sorted((labels or {}).items()))
        for key, _ in pairs:
            if not _LABEL.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"label name {key!r} of {self.name} is not a Prometheus name")
        if (suffix, pairs) in self.samples:
            raise ValueError(f"duplicate series {self.name}{suffix}{dict(pairs)}")
        self.samples[(suffix, pairs)] = value


def render(families: Iterable[Family]) -> str:
    """The exposition text of `families` (each name once), ending in a newline."""
    lines: list[str] = []
    seen: set[str] = set()
    for fam in families:
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name} given twice")
        seen.add(fam.name)
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for (suffix, pairs), value in fam.samples.items():
            labels = ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs)
            lines.append(f"{fam.name}{suffix}{{{labels}}} {_number(value)}" if labels
                         else f"{fam.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
