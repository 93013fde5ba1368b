"""The node's certificate renewal loop (no X.509 toolkit in this process).

At a jittered 50-67 % of the certificate's lifetime the node asks a child process for a
new key and CSR, calls `NodeCertService.Renew` on the channel its stream already uses
(the running stream keeps its handshake; the next connection presents the new
certificate), and saves the new identity. A certificate that expired while the node was
off is traded in a child process through `Reenroll` within the hub's grace; past it the
hub answers with what to do (a new join token).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import logging
import multiprocessing
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from cortex._proto.cortex.v1 import pki_pb2, pki_pb2_grpc
from cortex.core import certpolicy
from cortex.errors import CortexError, PermissionDenied
from cortex.node.identity import Identity, save_identity

__all__ = ["Renewer", "in_child", "is_revocation"]

log = logging.getLogger("cortex.node.renewal")
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 60.0
_CALL_TIMEOUT_S = 15.0


async def in_child(tool: str, *args: Any, **kwargs: Any) -> Any:
    """Run `cortex.node._certtool.<tool>` in a short-lived spawned process; this process
    never imports that module (nor the X.509 toolkit it loads)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        fut = pool.submit(_run_tool, tool, args, kwargs)
        return await asyncio.wrap_future(fut)


def _run_tool(tool: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return getattr(importlib.import_module(_TOOLS), tool)(*args, **kwargs)


_TOOLS = "cortex.node._certtool"


class Renewer:
    def __init__(self, *, data_dir: Path, name: str, identity: Callable[[], Identity],
                 replace: Callable[[Identity], None],
                 channel: Callable[[], grpc.aio.Channel | None],
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 child: Callable[..., Awaitable[Any]] = in_child) -> None:
        self._dir = data_dir
        self._name = name
        self._identity = identity
        self._replace = replace
        self._channel = channel
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._child = child
        self.renewals = 0
        self.last_error = ""
        self.renewed = asyncio.Event()  # set at each renewal (tests and health checks wait)

    async def run(self) -> None:
        """Forever: wait for the renewal point, renew (retrying), repeat."""
        failures = 0
        while True:
            try:
                await self.step()
                failures = 0
            except (CortexError, grpc.aio.AioRpcError, OSError) as exc:
                failures += 1
                self.last_error = _describe(exc)
                log.warning("certificate renewal failed: %s", self.last_error)
                cap = min(_RETRY_MAX_S, _RETRY_MIN_S * 2 ** min(failures, 8))
                await self._sleep(self._rng.uniform(cap / 2, cap))

    async def step(self) -> None:
        """Wait until the certificate is due, then renew (or re-enroll if it expired)."""
        ident = await self._with_validity(self._identity())
        validity = certpolicy.Validity(ident.not_before, ident.not_after)
        if self._clock() >= validity.not_after:
            await self._reenroll(ident)
            return
        due = certpolicy.renew_at(validity, self._rng.random())
        while (wait := due - self._clock()) > 0:
            await self._sleep(min(wait, 60.0))  # re-read the clock: suspend/resume skews it
        if self._identity().cert_pem != ident.cert_pem:
            return  # replaced meanwhile (a re-enrollment): start over with the new one
        if self._clock() >= validity.not_after:
            await self._reenroll(ident)
        else:
            await self._renew(ident)

    async def _with_validity(self, ident: Identity) -> Identity:
        if ident.not_after:
            return ident
        nb, na = await self._child("cert_validity", ident.cert_pem)
        ident = dataclasses.replace(ident, not_before=nb, not_after=na)
        save_identity(self._dir, ident)  # an identity from before renewal: read it once
        self._replace(ident)
        return ident

    async def _renew(self, ident: Identity) -> None:
        channel = self._channel()
        if channel is None:
            raise ConnectionError("not connected to the hub: renewal waits for the connection")
        key_pem, csr_pem = await self._child("new_key_and_csr", self._name)
        resp = await pki_pb2_grpc.NodeCertServiceStub(channel).Renew(
            pki_pb2.RenewRequest(csr_pem=csr_pem), timeout=_CALL_TIMEOUT_S)
        self._install(ident, key_pem, resp.certificate_pem, resp.ca_pem, resp.not_before,
                      resp.not_after)
        log.info("certificate renewed; valid until %s",
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(resp.not_after)))

    async def _reenroll(self, ident: Identity) -> None:
        log.warning("the node certificate expired; re-enrolling with it at %s", ident.hub)
        try:
            key_pem, chain, bundle, nb, na = await self._child(
                "reenroll", hub=ident.hub, name=self._name, key_pem=ident.key_pem,
                cert_pem=ident.cert_pem, ca_pem=ident.ca_pem)
        except PermissionDenied as exc:
            log.error("%s", exc)
            raise
        self._install(ident, key_pem, chain, bundle, nb, na)

    def _install(self, ident: Identity, key_pem: bytes, chain: bytes, bundle: bytes,
                 not_before: float, not_after: float) -> None:
        new = dataclasses.replace(ident, key_pem=key_pem, cert_pem=chain,
                                  ca_pem=bundle or ident.ca_pem, not_before=not_before,
                                  not_after=not_after)
        save_identity(self._dir, new)
        self._replace(new)
        self.renewals += 1
        self.last_error = ""
        self.renewed.set()


def is_revocation(exc: BaseException) -> bool:
    """Whether the hub refused this node because it was revoked."""
    return (isinstance(exc, grpc.aio.AioRpcError)
            and exc.code() == grpc.StatusCode.PERMISSION_DENIED
            and "revoked" in (exc.details() or ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
