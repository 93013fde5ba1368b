"""The generated HAProxy configuration: TCP passthrough, health checks, validation; the
real `haproxy -c` accepts what `render` writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cortex.cluster.haproxy import Backend, Balancer, render
from cortex.errors import InvalidArgument

HUBS = (Backend("hub-1", "127.0.0.1", 7001, 7002, 7003),
        Backend("hub-2", "10.0.0.2", 7011, 7012, 7013))


def test_both_ports_pass_through_in_tcp_mode() -> None:
    """Clients and nodes each get a frontend and a backend over every hub, in mode tcp."""
    text = render(Balancer("0.0.0.0:7443", "0.0.0.0:7444", HUBS))
    assert "    mode tcp" in text
    assert "    option redispatch" in text   # a refused connection goes to another hub
    assert "mode http" not in text
    assert "bind 0.0.0.0:7443" in text
    assert "bind 0.0.0.0:7444" in text
    assert "server hub-2 10.0.0.2:7011 check" in text   # client port
    assert "server hub-2 10.0.0.2:7012 check" in text   # node port


def test_hubs_with_http_ports_are_checked_on_readyz() -> None:
    """With HTTP ports, checks ask /readyz on them (a draining hub gets no new streams)."""
    text = render(Balancer("127.0.0.1:1", "127.0.0.1:2", HUBS))
    assert "http-check send meth GET uri /readyz" in text
    assert "port 7013 on-marked-down shutdown-sessions" in text


def test_hubs_without_http_ports_are_checked_by_connecting() -> None:
    """Without HTTP ports there is no HTTP check, just TCP connects."""
    hubs = (Backend("a", "127.0.0.1", 1, 2), Backend("b", "127.0.0.1", 3, 4))
    text = render(Balancer("127.0.0.1:5", "127.0.0.1:6", hubs))
    assert "httpchk" not in text
    assert "server a 127.0.0.1:1 check inter 1000 fall 2 rise 2 on-marked-down" in text


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Balancer("127.0.0.1:1", "127.0.0.1:2", ()), "at least one hub"),
    (lambda: Balancer("127.0.0.1:1", "127.0.0.1:2", (HUBS[0], HUBS[0])), "unique"),
    (lambda: Balancer("nope", "127.0.0.1:2", HUBS), "balancer client address"),
    (lambda: Balancer("127.0.0.1:1", "127.0.0.1:2",
                      (HUBS[0], Backend("x", "h", 1, 2))), "every hub an http_port"),
    (lambda: Backend("bad name", "h", 1, 2), "backend name"),
    (lambda: Backend("a", "h", 0, 2), "hub a address"),
    (lambda: Balancer("127.0.0.1:1", "127.0.0.1:2", HUBS, idle_timeout_s=5), "idle"),
])
def test_bad_values_are_refused(make: object, message: str) -> None:
    """Every malformed balancer value is refused with a message naming the field."""
    with pytest.raises(InvalidArgument, match=message):
        make()  # type: ignore[operator]


def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    """`haproxy -c` (the real binary) validates the generated file."""
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(Balancer("127.0.0.1:7443", "[::1]:7444", HUBS)))
    done = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cli_prints_the_config_and_names_bad_hubs() -> None:
    """`cortex cluster haproxy-config` prints the file; a malformed --hub is a usage error
    naming the expected shape."""
    from typer.testing import CliRunner

    from cortex.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["cluster", "haproxy-config", "--hub",
                             "hub-1=10.0.0.1:7443/7444/7445", "--hub", "hub-2=[::2]:1/2/3"])
    assert ok.exit_code == 0, ok.output
    assert "server hub-2 [::2]:2 check" in ok.output
    bad = runner.invoke(app, ["cluster", "haproxy-config", "--hub", "hub-1=10.0.0.1:7443"])
    assert bad.exit_code == 2
    assert "NAME=HOST:PORT/NODE_PORT" in bad.output
