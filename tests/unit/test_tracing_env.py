"""When tracing turns on (the environment's say), what a traceparent must look like, and
that every hook is inert while tracing is off."""

from __future__ import annotations

import pytest

from cortex import tracing
from cortex.tracing import _wanted_exporter

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(("env", "exporter"), [
    ({}, None),
    ({"CORTEX_TRACE": "0"}, None),
    ({"CORTEX_TRACE": "1"}, "otlp"),
    ({"CORTEX_TRACE": "otlp"}, "otlp"),
    ({"CORTEX_TRACE": "console"}, "console"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, None),
    ({"CORTEX_TRACE": "1", "OTEL_TRACES_EXPORTER": "none"}, None),
])
def test_the_environment_decides_the_exporter(env: dict[str, str],
                                              exporter: str | None) -> None:
    """OTLP when an endpoint or CORTEX_TRACE=1 asks, console on request, and the standard
    off switches win over everything."""
    assert _wanted_exporter(env) == exporter


@pytest.mark.parametrize(("value", "ok"), [
    (TP, True),
    (TP[:-2] + "03", True),
    ("01" + TP[2:], False),                                   # unknown version
    ("00-" + "0" * 32 + "-b7ad6b7169203331-01", False),       # zero trace id
    ("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", False),
    (TP.upper(), False),
    (TP + "-x", False),
    ("", False),
])
def test_traceparent_format(value: str, ok: bool) -> None:
    """Version 00, lowercase hex, non-zero ids, nothing after."""
    assert tracing.valid_traceparent(value) is ok


def test_every_hook_is_inert_while_off() -> None:
    """No span, no context, no recorded span: tracing is off unless configured."""
    assert not tracing.active()
    with tracing.span("x", parent=TP, kind="server") as span:
        assert span is None
        assert tracing.current_traceparent() == ""
    assert tracing.record("y", parent=TP, start=1.0) == ""
    assert tracing.traceparent_of(None) == ""
