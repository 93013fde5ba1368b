"""The vendored front-end files are the ones VENDORED.md names (by sha256), shipped in
the package, and the templates load nothing from outside the hub."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

STATIC = resources.files("cortex.hub.web") / "static"
TEMPLATES = resources.files("cortex.hub.web") / "templates"


def test_vendored_files_match_the_digests_recorded_beside_them() -> None:
    """An edited or half-refreshed htmx file fails here, naming the file."""
    listed = dict((name, digest) for digest, name in re.findall(
        r"^\s+([0-9a-f]{64})\s+(\S+)$", (STATIC / "VENDORED.md").read_text(), re.M))
    assert set(listed) == {"htmx.min.js", "htmx-ext-sse.min.js"}
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name


def test_templates_reference_no_outside_script_or_style() -> None:
    """No CDN at run time: every src/href in the templates is the hub's own or a data URI."""
    for template in TEMPLATES.iterdir():
        text = template.read_text()
        for url in re.findall(r'(?:src|href)="([^"]+)"', text):
            assert url.startswith(("{{ base }}", "data:")), (template.name, url)
