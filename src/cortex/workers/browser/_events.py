"""The session's console and network events: a bounded ring, numbered, kept on disk too.

Every event gets a sequence number (``seq``) so a reader resumes where it stopped
(``cortex browser logs --follow``). The ring holds the newest `MAX_EVENTS`; they are also
appended to ``events.jsonl`` in the session dir (up to `MAX_FILE_BYTES`, then a note), so
a worker started after a crash still answers for what happened before it.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["EventLog"]

MAX_EVENTS = 5000
MAX_FILE_BYTES = 32 << 20
_TAIL_BYTES = 2 << 20  # read back at start


class EventLog:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._size = 0
        self._full_noted = False
        self._load()

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            event = {"seq": self._seq, "time": round(time.time(), 3), "kind": kind, **fields}
            self._ring.append(event)
            self._persist(event)
            return event

    def since(self, seq: int, *, kinds: set[str] | None = None, level: str | None = None,
              url: str | None = None, failed_only: bool = False, limit: int = 500
              ) -> tuple[list[dict[str, Any]], bool]:
        """Events after `seq` that pass the filters, oldest first; True if more were cut."""
        with self._lock:
            found = [e for e in self._ring if e["seq"] > seq and _passes(
                e, kinds=kinds, level=level, url=url, failed_only=failed_only)]
        return found[:limit], len(found) > limit

    def _persist(self, event: dict[str, Any]) -> None:
        if self._size >= MAX_FILE_BYTES:
            if not self._full_noted:
                self._full_noted = True
                self._ring.append({"seq": event["seq"], "kind": "note", "time": event["time"],
                                   "text": f"events.jsonl reached {MAX_FILE_BYTES} bytes; "
                                           "further events are kept in memory only"})
            return
        line = json.dumps(event, separators=(",", ":")) + "\n"
        try:
            with self._path.open("a", encoding="utf-8") as f:
                f.write(line)
            self._size += len(line)
        except OSError:
            pass  # the ring still has it; the disk copy is the crash backup only

    def _load(self) -> None:
        try:
            self._size = self._path.stat().st_size
            with self._path.open("rb") as f:
                f.seek(max(0, self._size - _TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return
        for line in tail[1:] if self._size > _TAIL_BYTES else tail:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if isinstance(event, dict) and isinstance(event.get("seq"), int):
                self._ring.append(event)
                self._seq = max(self._seq, event["seq"])


def _passes(e: dict[str, Any], *, kinds: set[str] | None, level: str | None, url: str | None,
            failed_only: bool) -> bool:
    if kinds and e["kind"] not in kinds:
        return False
    if level and e.get("level") != level:
        return False
    if url and url not in str(e.get("url", "")):
        return False
    return not failed_only or e["kind"] == "requestfailed" or (
        e["kind"] == "response" and int(e.get("status", 0)) >= 400)
