"""Tracing turned on by the standard OpenTelemetry environment, end to end: `cortex up`
and the `cortex run` CLI, started with OTEL_EXPORTER_OTLP_ENDPOINT, export their spans
over OTLP/gRPC to a real collector endpoint (a gRPC TraceService on loopback, here), and
the client's, hub's and node's spans of the task share one trace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CORTEX_BIN = Path(sys.executable).with_name("cortex")
WAIT_S = 30.0
READY = re.compile(r"^cortex is up in .*: hub (\S+), node (\S+) connected\.")


class Collector(otlp_grpc.TraceServiceServicer):
    """Keeps every span it is sent as (service name, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self.changed = threading.Condition()

    def Export(self, request: otlp.ExportTraceServiceRequest, context: Any
               ) -> otlp.ExportTraceServiceResponse:
        with self.changed:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes
                                if a.key == "service.name"), "")
                self.spans += [(service, s) for ss in rs.scope_spans for s in ss.spans]
            self.changed.notify_all()
        return otlp.ExportTraceServiceResponse()

    def wait_for(self, name: str) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(s.name == name for _, s in self.spans), WAIT_S), \
                f"no {name} span within {WAIT_S:g} s: got {[s.name for _, s in self.spans]}"


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sink = Collector()
    otlp_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield sink, port
    finally:
        server.stop(grace=None)


def test_cortex_up_and_the_cli_export_one_trace_over_otlp(
        collector: tuple[Collector, int], tmp_path: Path) -> None:
    """`cortex run` (service cortex-client) and `cortex up` (service cortex: hub and node)
    report client submit, hub submit/queue/dispatch and node execute spans of the task,
    all in one trace, each linked to its parent."""
    sink, port = collector
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CORTEX_", "OTEL_"))}
    env.update(CORTEX_HOME=str(tmp_path / "home"),
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
               OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_BSP_SCHEDULE_DELAY="100")
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen([str(CORTEX_BIN), "up", "--port", "0", "--node-port", "0",
                               "--http-port", "-1"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert up.stdout is not None
        first = up.stdout.readline()
        assert READY.match(first), (first, (tmp_path / "up.log").read_text())
        done = subprocess.run([str(CORTEX_BIN), "run", "--", "echo", "traced"],
                              capture_output=True, text=True, env=env, timeout=WAIT_S,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert "traced" in done.stdout
        sink.wait_for("cortex.client.submit")
        sink.wait_for("cortex.node.execute")
    finally:
        up.send_signal(2)
        up.wait(WAIT_S)
        if up.stdout is not None:
            up.stdout.close()
    with sink.changed:
        spans = {s.name: (service, s) for service, s in sink.spans}
    names = ("cortex.client.submit", "cortex.hub.submit", "cortex.hub.queue",
             "cortex.hub.dispatch", "cortex.node.execute")
    assert set(names) <= set(spans), sorted(spans)
    assert spans["cortex.client.submit"][0] == "cortex-client"
    assert {spans[n][0] for n in names[1:]} == {"cortex"}
    assert len({spans[n][1].trace_id for n in names}) == 1
    span_id = {n: spans[n][1].span_id for n in names}
    parent = {n: spans[n][1].parent_span_id for n in names}
    assert parent["cortex.hub.submit"] == span_id["cortex.client.submit"]
    assert parent["cortex.hub.queue"] == span_id["cortex.hub.submit"]
    assert parent["cortex.hub.dispatch"] == span_id["cortex.hub.submit"]
    assert parent["cortex.node.execute"] == span_id["cortex.hub.dispatch"]
