"""Join token text format, shared by the hub (issuing) and nodes (using). Pure parsing."""

from __future__ import annotations

from cortex.errors import InvalidArgument

__all__ = ["parse_join_token"]


def parse_join_token(token: str) -> tuple[str, str, str]:
    """(id, secret, CA pin) of ``cjt_<id>.<secret>#sha256:<pin>``; InvalidArgument if off."""
    body, _, pin = token.strip().partition("#")
    token_id, dot, secret = body.removeprefix("cjt_").partition(".")
    if not body.startswith("cjt_") or not dot or not token_id or not secret:
        raise InvalidArgument(
            "malformed join token: expected cjt_<id>.<secret>#sha256:<pin> from "
            "`cortex token join`"
        )
    digest = pin.removeprefix("sha256:")
    if pin and (not pin.startswith("sha256:") or len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest)):
        raise InvalidArgument(
            "malformed join token: the CA pin must be sha256: and 64 lowercase hex digits")
    return token_id, secret, pin
