"""Hub address lists: parsing with precise errors, gRPC targets, where nodes dial, and
the hub's public addresses (values only; no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex._dial import ROUND_ROBIN, balanced_target, channel_target
from cortex.core.addresses import (
    join_addresses,
    parse_addresses,
    split_host_port,
    static_target,
)
from cortex.errors import InvalidArgument
from cortex.hub.config import HubConfig
from cortex.node.config import NodeConfig
from cortex.node.enroll import node_address
from cortex.sdk import ClientConfig, ConfigError

TOKEN = "ctk_x.y"  # noqa: S105 - a made-up token for config parsing


def test_one_address_parses_to_itself() -> None:
    """A single HOST:PORT is a one-element list, unchanged."""
    assert parse_addresses("hub.example:7443") == ("hub.example:7443",)


def test_lists_keep_order_and_drop_spaces() -> None:
    """Entries keep their order; spaces around commas are ignored."""
    assert parse_addresses("b:2, a:1 ,[::1]:3") == ("b:2", "a:1", "[::1]:3")


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not HOST:PORT"),
    ("a:1,,b:2", "has an empty entry"),
    ("a:1,", "has an empty entry"),
    ("a:1,a:1", "names a:1 twice"),
    ("a:1,b", "'b' is not HOST:PORT"),
    ("a:99999", "is not HOST:PORT"),
    ("::1:7443", "put an IPv6 address in brackets"),
    ("a b:1", "may not contain spaces"),
    ("user@h:1", "may not contain"),
])
def test_bad_lists_say_what_is_wrong(text: str, message: str) -> None:
    """Each malformed list is refused with an error naming the problem."""
    with pytest.raises(InvalidArgument, match=message):
        parse_addresses(text)


def test_too_many_addresses_are_refused() -> None:
    """A list is bounded (64 entries)."""
    with pytest.raises(InvalidArgument, match="at most 64"):
        parse_addresses(",".join(f"h{i}:1" for i in range(65)))


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                          st.integers(1, 65535)), min_size=1, max_size=8, unique=True))
def test_join_is_the_inverse_of_parse(pairs: list[tuple[str, int]]) -> None:
    """parse(join(list)) gives the list back."""
    addresses = tuple(f"{h}:{p}" for h, p in pairs)
    assert parse_addresses(join_addresses(addresses)) == addresses


def test_split_strips_ipv6_brackets() -> None:
    """IPv6 hosts come back bare, ports as integers."""
    assert split_host_port("[fe80::1]:7443") == ("fe80::1", 7443)


def test_static_targets_for_ip_lists() -> None:
    """IPv4 and IPv6 literal lists become gRPC ipv4:/ipv6: targets; names do not."""
    assert static_target(("10.0.0.1:1",)) == "10.0.0.1:1"
    assert static_target(("10.0.0.1:1", "10.0.0.2:2")) == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert static_target(("[::1]:1", "[::2]:2")) == "ipv6:[::1]:1,[::2]:2"
    assert static_target(("hub-a:1", "10.0.0.2:2")) is None
    assert static_target(("[::1]:1", "10.0.0.2:2")) is None


def test_names_are_resolved_for_a_balanced_channel() -> None:
    """Several host names resolve to one static target (localhost -> 127.0.0.1)."""
    assert channel_target(("localhost:1", "127.0.0.1:2")) == "ipv4:127.0.0.1:1,127.0.0.1:2"


def test_balancing_only_with_several_addresses() -> None:
    """One address dials as given; several get round robin and retries."""
    assert balanced_target(("h:1",)) == ("h:1", [])
    target, options = balanced_target(("127.0.0.1:1", "127.0.0.1:2"))
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert ("grpc.service_config", ROUND_ROBIN) in options
    assert json.loads(ROUND_ROBIN) == {"loadBalancingConfig": [{"round_robin": {}}]}


def test_client_config_takes_lists_and_refuses_bad_ones() -> None:
    """ClientConfig accepts a list in `address` and names the bad entry otherwise."""
    config = ClientConfig(address="127.0.0.1:1, 127.0.0.1:2", token=TOKEN)
    assert config.addresses == ("127.0.0.1:1", "127.0.0.1:2")
    with pytest.raises(ConfigError, match="has an empty entry"):
        ClientConfig(address="127.0.0.1:1,,127.0.0.1:2", token=TOKEN)


def test_client_json_address_may_be_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """client.json's "address" may be a JSON list; its token goes to that list only."""
    for var in ("CORTEX_HUB", "CORTEX_TOKEN", "CORTEX_CA"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "tok").write_text(TOKEN + "\n")
    (tmp_path / "client.json").write_text(json.dumps(
        {"address": ["127.0.0.1:1", "127.0.0.1:2"], "token_file": "tok"}))
    config = ClientConfig.from_env(tmp_path, insecure=True)
    assert config.address == "127.0.0.1:1,127.0.0.1:2"
    assert config.token == TOKEN
    # The same hubs spelled with spaces still get the local token.
    assert ClientConfig.from_env(tmp_path, address="127.0.0.1:1 , 127.0.0.1:2",
                                 insecure=True).token == TOKEN
    (tmp_path / "client.json").write_text(json.dumps({"address": [1, 2]}))
    with pytest.raises(ConfigError, match='neither a "HOST:PORT" string nor a list'):
        ClientConfig.from_env(tmp_path, insecure=True)


def test_node_dials_the_public_node_address_when_the_hub_names_one() -> None:
    """Enrollment's node address: the hub's public one, else each enroll host + node port."""
    assert node_address("lb:7443", "lb:7444", 9999) == "lb:7444"
    assert node_address("a:7443,b:7443", "", 7444) == "a:7444,b:7444"
    assert node_address("a:7443,a:8443", "", 7444) == "a:7444"
    assert node_address("[::1]:7443", "", 7444) == "[::1]:7444"


def test_node_config_validates_its_addresses(tmp_path: Path) -> None:
    """`cortex node --hub/--node-address` lists are checked at startup."""
    NodeConfig(data_dir=tmp_path, hub="a:1,b:2", node_address="a:3,b:4")
    with pytest.raises(InvalidArgument, match="node config: node_address"):
        NodeConfig(data_dir=tmp_path, node_address="a:3,,b:4")


def test_hub_public_addresses_join_the_certificate_names(tmp_path: Path) -> None:
    """--public-address/--public-node-address hosts are added to --advertise, once each."""
    cfg = HubConfig(data_dir=tmp_path, advertise=("extra.example",),
                    public_address="lb.example:7443,10.0.0.9:7443",
                    public_node_address="lb.example:7444")
    assert cfg.certificate_names == ("extra.example", "lb.example", "10.0.0.9")
    assert cfg.ca_root == tmp_path / "ca"
    with pytest.raises(InvalidArgument, match="hub config: public_node_address"):
        HubConfig(data_dir=tmp_path, public_node_address="lb.example")
