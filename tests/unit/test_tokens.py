"""Join token parsing: ``cjt_<id>.<secret>#sha256:<pin>`` in, its three parts out."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.core.tokens import parse_join_token
from cortex.errors import InvalidArgument

PIN = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("token", "expected"), [
    (f"cjt_abc123.s3cr3t#{PIN}", ("abc123", "s3cr3t", PIN)),
    ("cjt_abc123.s3cr3t", ("abc123", "s3cr3t", "")),
    (f"  cjt_abc.def#{PIN}\n", ("abc", "def", PIN)),
    (f"cjt_id.sec.ret#{PIN}", ("id", "sec.ret", PIN)),
    (f"cjt_cjt_x.y#{PIN}", ("cjt_x", "y", PIN)),
])
def test_well_formed_tokens_parse(token: str, expected: tuple[str, str, str]) -> None:
    """Good tokens give (id, secret, pin); whitespace around is ignored, the pin is optional
    and the secret runs to the '#' (dots included)."""
    assert parse_join_token(token) == expected


@pytest.mark.parametrize("token", [
    "",
    "   ",
    "abc.def",
    "cjt_",
    "cjt_abc",
    "cjt_abc.",
    "cjt_.def",
    "cjt_.",
    "CJT_abc.def",
    "xcjt_abc.def",
    " cjt abc.def",
    f"#{PIN}",
    f"cjt_abc#{PIN}",
    f"cjt_abc.#{PIN}",
])
def test_malformed_bodies_are_refused_with_the_expected_shape(token: str) -> None:
    """A token without the cjt_ prefix, an id, a dot or a secret is refused, and the error
    shows the expected form and where to get a token."""
    with pytest.raises(InvalidArgument) as info:
        parse_join_token(token)
    message = str(info.value)
    assert "malformed join token" in message
    assert "cjt_<id>.<secret>#sha256:<pin>" in message
    assert "cortex token join" in message


@pytest.mark.parametrize("pin", ["md5:abcd", "SHA256:abcd", "abcd", "sha1:ab", " sha256:ab"])
def test_pins_not_starting_with_sha256_are_refused(pin: str) -> None:
    """A pin of another algorithm (or none named) is refused, saying it must be sha256."""
    with pytest.raises(InvalidArgument, match=r"the CA pin must be sha256: and 64"):
        parse_join_token(f"cjt_abc.def#{pin}")


@pytest.mark.parametrize("digest", ["", "ab", "A" * 64, "g" * 64, "a" * 63, "a" * 65])
def test_pins_without_a_full_sha256_digest_are_refused(digest: str) -> None:
    """A pin whose digest is not 64 lowercase hex digits is refused at parse time."""
    with pytest.raises(InvalidArgument, match=r"64 lowercase hex digits"):
        parse_join_token(f"cjt_abc.def#sha256:{digest}")


@settings(max_examples=200, deadline=None)
@given(
    # The hub issues hex ids and URL-safe secrets; secrets may also carry dots.
    token_id=st.text("0123456789abcdef", min_size=1, max_size=30),
    secret=st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=60),
    digest=st.text("0123456789abcdef", min_size=64, max_size=64),
    with_pin=st.booleans(),
)
def test_parse_inverts_formatting(token_id: str, secret: str, digest: str,
                                  with_pin: bool) -> None:
    """Whatever id, secret and pin `cortex token join` formats, parsing gives them back."""
    pin = f"sha256:{digest}" if with_pin else ""
    text = f"cjt_{token_id}.{secret}" + (f"#{pin}" if with_pin else "")
    assert parse_join_token(text) == (token_id, secret, pin)
