"""Strict validation of a browser action's JSON args: unknown names and wrong types are
refused with the list of what the action takes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ActionError", "Args", "Param"]


class ActionError(Exception):
    """The action cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Param:
    kind: str  # "str", "int", "float", "bool", "list[str]", "dict", "list[dict]", "any"
    default: Any = None
    choices: tuple[str, ...] = ()

    def check(self, action: str, name: str, value: Any) -> Any:
        ok = _CHECKS[self.kind](value)
        if not ok:
            raise ActionError(f"{action}: {name} must be {self.kind}, got {value!r}"[:400])
        if self.kind == "int":
            value = int(value)
        if self.kind == "float":
            value = float(value)
        if self.choices and value not in self.choices:
            raise ActionError(f"{action}: {name} must be one of {', '.join(self.choices)}, "
                              f"got {value!r}")
        return value


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: _is_num(v) and float(v).is_integer(),
    "float": _is_num,
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "dict": lambda v: isinstance(v, dict),
    "list[dict]": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "any": lambda v: True,
}


class Args:
    """One action's validated args: ``args["ref"]`` (None when not given and no default)."""

    def __init__(self, action: str, raw: dict[str, Any], params: dict[str, Param]) -> None:
        unknown = sorted(set(raw) - set(params) - {"action"})
        if unknown:
            takes = ", ".join(sorted(params)) or "no args"
            raise ActionError(f"{action} does not take {', '.join(unknown)}; it takes: {takes}")
        self.action = action
        self._values = {name: p.default for name, p in params.items()}
        for name, value in raw.items():
            if name != "action" and value is not None:
                self._values[name] = params[name].check(action, name, value)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def given(self, name: str) -> bool:
        return self._values.get(name) is not None

    def require(self, *names: str) -> None:
        if not any(self.given(n) for n in names):
            raise ActionError(f"{self.action} needs {' or '.join(names)}")
