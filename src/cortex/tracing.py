"""OpenTelemetry tracing of a task across client → hub → node, off unless asked for.

Turned on by the environment (read once per process, by `setup_from_env`):

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, or
  ``CORTEX_TRACE=1`` (or ``otlp``): spans go to an OTLP/gRPC collector (the standard
  ``OTEL_EXPORTER_OTLP_*`` variables configure it; default ``localhost:4317``);
- ``CORTEX_TRACE=console``: spans are printed to stderr as JSON;
- ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` wins: off.

or by the embedding program / a test, with `configure(provider)`. While off, nothing of
OpenTelemetry is imported and every hook is one `None` check.

The trace context travels as a W3C ``traceparent``: the SDK sends it in the gRPC metadata
of Submit; the hub stores its own submit span's context with the task
(``TaskSpec.traceparent``) and sends its dispatch span's context with each assignment
(``Assign.traceparent``), from which the node continues the trace for the execution.
Spans: ``cortex.client.run`` / ``cortex.client.submit`` (client), ``cortex.hub.submit``
(server), ``cortex.hub.queue`` (submission to assignment), ``cortex.hub.dispatch``
(producer), ``cortex.node.execute`` (consumer).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["active", "configure", "current_traceparent", "now", "record",
           "setup_from_env", "span", "traceparent_of", "valid_traceparent"]

log = logging.getLogger("cortex.tracing")

_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_KINDS = ("internal", "client", "server", "producer", "consumer")
_tracer: Tracer | None = None
_from_env_done = False


def active() -> bool:
    """Whether spans are recorded in this process."""
    return _tracer is not None


def configure(provider: TracerProvider | None) -> None:
    """Record Cortex's spans through `provider` (None: stop recording)."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("cortex")


def setup_from_env(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on as the environment asks (see the module docstring), once per
    process; whether it is on. A tracer already configured is kept."""
    global _from_env_done
    if _from_env_done or _tracer is not None:
        return _tracer is not None
    _from_env_done = True
    env = os.environ if env is None else env
    exporter = _wanted_exporter(env)
    if exporter is None:
        return False
    try:
        provider = _provider(service, exporter, env)
    except ImportError as exc:
        log.warning("tracing asked for (%s) but OpenTelemetry is not installed (%s): "
                    "pip install 'cortex-fleet[trace]'", exporter, exc)
        return False
    configure(provider)
    log.info("tracing on: spans of %s go to %s", service, exporter)
    return True


def _wanted_exporter(env: Mapping[str, str]) -> str | None:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" \
            or env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return None
    wish = env.get("CORTEX_TRACE", "").strip().lower()
    if wish == "console":
        return "console"
    if wish in ("1", "true", "otlp") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") \
            or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def _provider(service: str, exporter: str, env: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def now() -> float:
    """The time spans are stamped with (Unix seconds)."""
    return time.time()


def valid_traceparent(value: str) -> bool:
    """A W3C traceparent of version 00 with non-zero ids."""
    return bool(_TRACEPARENT.fullmatch(value))


_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(name: str, *, parent: str = "", kind: str = "internal",
         attributes: Mapping[str, Any] | None = None
         ) -> contextlib.AbstractContextManager[Span | None]:
    """A span around a `with` block (it gives None while tracing is off, at the cost of
    one check): a child of `parent` (a traceparent) when it is valid, else of the current
    span."""
    if _tracer is None:
        return _OFF
    return _span(_tracer, name, parent, kind, attributes)


@contextlib.contextmanager
def _span(tracer: Tracer, name: str, parent: str, kind: str,
          attributes: Mapping[str, Any] | None) -> Iterator[Span]:
    with tracer.start_as_current_span(name, context=_context(parent), kind=_kind(kind),
                                      attributes=dict(attributes or {})) as current:
        yield current


def record(name: str, *, parent: str, start: float, end: float | None = None,
           kind: str = "internal", attributes: Mapping[str, Any] | None = None) -> str:
    """A finished span from `start` to `end` (Unix times; end: now) under `parent`; its
    traceparent ("" while tracing is off)."""
    if _tracer is None:
        return ""
    done = time.time() if end is None else end
    new = _tracer.start_span(name, context=_context(parent), kind=_kind(kind),
                             attributes=dict(attributes or {}),
                             start_time=int(min(start, done) * 1e9))
    new.end(end_time=int(done * 1e9))
    return traceparent_of(new)


def current_traceparent() -> str:
    """The current span's traceparent ("" while off or outside any span)."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def traceparent_of(of: Span | None) -> str:
    """The traceparent naming `of` as the parent ("" for None)."""
    if of is None:
        return ""
    ctx = of.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _context(parent: str) -> Any:
    if not parent or not valid_traceparent(parent):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": parent})


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    if kind not in _KINDS:
        raise ValueError(f"span kind {kind!r}: one of {', '.join(_KINDS)}")
    return SpanKind[kind.upper()]
