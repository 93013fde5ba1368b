"""Files of a session for the node to publish as artifacts (the worker has no hub link).

The worker appends one JSON line per file to ``outbox.jsonl`` in the session dir; after
each action the node's browser skill takes the file (renames it away, so lines a later
download appends start a new one) and uploads what it names as artifacts of that action's
task (see cortex.skills.browser._files). Three kinds of line:

- ``{"kind": "file", "path": ..., "media_type": ...}``: a finished file (screenshot, HAR,
  a download the page triggered);
- ``{"kind": "growing", "path": ...}``: a video segment being written; the node streams
  it to the hub while it grows, so a crash loses at most the last fragment;
- ``{"kind": "done"}``: the session's growing files are complete (the recording stopped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["OUTBOX", "publish"]

OUTBOX = "outbox.jsonl"


def publish(folder: Path, kind: str, path: Path | None = None, *, media_type: str = "") -> None:
    """Append one line to the session's outbox (one write: lines never interleave)."""
    line: dict[str, str] = {"kind": kind}
    if path is not None:
        line["path"] = str(path)
    if media_type:
        line["media_type"] = media_type
    fd = os.open(folder / OUTBOX, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
