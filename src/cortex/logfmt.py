"""Log output of the long-running processes (`cortex hub`, `cortex node`, `cortex up`):
human text (the default) or one JSON object per line (`--log-format json`).

A JSON line carries `time` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`,
and when known `task_id`, `node_id`, `tenant` and `hub_id`: from the record's `extra` when
the call site gives them, else `task_id`/`node_id` are the first task id (`t-…`) and node
id (`n-…`) the message names. An exception adds `error` (its type and text) and
`traceback`. Any other `extra` values a call site passes are kept under their own names.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any, Final

__all__ = ["FORMATS", "JsonFormatter", "setup_logging"]

FORMATS: Final = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_IDS = {"task_id": re.compile(r"\bt-[0-9a-z]{20}\b"), "node_id": re.compile(r"\bn-[0-9a-z]{20}\b")}
_KNOWN = ("tenant", "hub_id")
# Attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
                      .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, pattern in _IDS.items():
            given = getattr(record, key, None)
            if given:
                out[key] = str(given)
            elif found := pattern.search(message):
                out[key] = found.group(0)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool)) or value is None \
                    else repr(value)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = f"{type(exc).__name__}: {exc}"
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def setup_logging(*, verbose: bool = False, fmt: str = "text") -> None:
    """Log to stderr at INFO (DEBUG when `verbose`) in `fmt` ("text" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: pick one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
