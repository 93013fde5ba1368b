"""Task output cut to what a model should read: values in, text out, no I/O.

A place in a task's output is ``(after_seq, skip_bytes)``: the events after sequence
number `after_seq`, less the first `skip_bytes` bytes of the first of them. Two shapes,
both bounded whatever the task prints:

- `Clip` keeps one stream's head and tail (the start says what ran, the end says how it
  ended) and names the place where the gap begins, to read it with ``task_output``.
- `Page` takes output from a place on until a byte budget is spent, and names the place
  where the next page starts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Clip", "Page", "decode", "utf8_cut"]


def decode(data: bytes) -> str:
    """Bytes as text; a character cut by a bound (or invalid UTF-8) shows as U+FFFD."""
    return data.decode("utf-8", errors="replace")


def utf8_cut(data: bytes, size: int) -> int:
    """`size`, moved back so as not to split a UTF-8 character (unless nothing would be left)."""
    if size >= len(data):
        return len(data)
    at = size
    # Step back over continuation bytes (0b10xxxxxx) to the start of the character.
    while at > 0 and size - at < 3 and data[at] & 0xC0 == 0x80:
        at -= 1
    return at if at > 0 else size


@dataclass
class Clip:
    """One stream's output within `limit` bytes: its head and its tail, the middle left out."""

    limit: int
    omitted: int = 0
    """Bytes left out between the head and the tail."""
    gap: tuple[int, int] | None = None
    """Where the left-out bytes begin: (after_seq, skip_bytes) for task_output."""
    _head: bytearray = field(default_factory=bytearray)
    _head_done: bool = False
    _tail: deque[tuple[int, int, bytes]] = field(default_factory=deque)  # seq, offset, data
    _tail_bytes: int = 0

    def add(self, seq: int, data: bytes) -> None:
        offset = 0
        room = self.limit // 2 - len(self._head)
        if room > 0 and not self._head_done:
            offset = utf8_cut(data, room)
            self._head += data[:offset]
        if offset == len(data):
            return
        self._head_done = True  # the rest goes to the tail, and so does all that follows
        self._tail.append((seq, offset, data[offset:]))
        self._tail_bytes += len(data) - offset
        tail_limit = self.limit - self.limit // 2
        while self._tail_bytes > tail_limit:
            first_seq, first_offset, first = self._tail[0]
            cut = _char_start(first, self._tail_bytes - tail_limit)
            if self.gap is None:
                self.gap = (first_seq - 1, first_offset)
            if cut == len(first):
                self._tail.popleft()
            else:
                self._tail[0] = (first_seq, first_offset + cut, first[cut:])
            self._tail_bytes -= cut
            self.omitted += cut

    def text(self, task_id: str) -> str:
        """The kept output; a marker in the gap says how much is missing and how to read it."""
        head = decode(bytes(self._head))
        tail = decode(b"".join(data for _, _, data in self._tail))
        if self.gap is None:
            return head + tail
        after_seq, skip = self.gap
        return (
            f"{head}\n[truncated: {self.omitted} more bytes here; read them with "
            f"task_output(task_id={task_id!r}, after_seq={after_seq}, skip_bytes={skip})]\n"
            f"{tail}"
        )


def _char_start(data: bytes, at: int) -> int:
    """`at`, moved on past UTF-8 continuation bytes (at most 3) to a character's start."""
    end = min(at, len(data))
    for _ in range(3):
        if end >= len(data) or data[end] & 0xC0 != 0x80:
            break
        end += 1
    return end


@dataclass
class Page:
    """Output from the place ``(after_seq, skip_bytes)`` on, until `max_bytes` are taken."""

    after_seq: int
    skip_bytes: int
    max_bytes: int
    full: bool = False
    """The budget stopped the page: more output is waiting at the next place."""
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    taken: int = 0
    """Bytes of output in the page."""
    next_seq: int = field(init=False)
    next_skip_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.next_seq, self.next_skip_bytes = self.after_seq, self.skip_bytes

    def add_output(self, seq: int, data: bytes, *, to_stdout: bool) -> bool:
        """Take one output event, or as much as fits; False once the page is full."""
        if self.full:
            return False
        skip = self.skip_bytes if seq == self.after_seq + 1 else 0
        data = data[skip:]
        room = self.max_bytes - self.taken
        size = len(data) if len(data) <= room else utf8_cut(data, room)
        (self.stdout if to_stdout else self.stderr).extend(data[:size])
        self.taken += size
        if size == len(data):
            self.next_seq, self.next_skip_bytes = seq, 0
            return True
        self.full = True
        if size:
            self.next_seq, self.next_skip_bytes = seq - 1, skip + size
        return False

    def add_other(self, seq: int) -> None:
        """Step over an event that carries no output (a state change)."""
        if not self.full:
            self.next_seq, self.next_skip_bytes = seq, 0
