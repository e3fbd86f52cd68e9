"""A small synchronous wrapper for scripts: ``with SyncClient(nats=url) as c: c.run(job)``.

Used without ever entering a ``with`` block, each call is one-shot: it opens the client (with no
arguments and no ``CRANKMESH_NATS``, that starts a local mesh), runs, and closes it --
``SyncClient().run(Job.python("print(42)")).stdout`` works on a fresh install.

Resource handling: an event loop runs in a background thread (an anyio blocking
portal) for the life of the ``with`` block; the async :class:`Client` lives there.
Error handling: exceptions from the async client are re-raised unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .._loop import backend_options
from .client import Client, CostReport
from .job import Job, JobResult

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """Blocking facade over :class:`Client`; takes the same arguments."""

    def __init__(self, **client_kwargs: Any) -> None:
        self._kwargs = client_kwargs
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._client: Client | None = None
        self._client_cm: AbstractContextManager[Client] | None = None
        #: Closed after a ``with`` block: no further use (one-shot calls are for a
        #: SyncClient never opened with ``with``).
        self._closed = False

    def __enter__(self) -> SyncClient:
        if self._closed:
            from ..protocol.errors import ClientStateError

            raise ClientStateError("Cannot reopen a SyncClient once it has been closed.")
        return self._open()

    def _open(self) -> SyncClient:
        self._portal_cm = start_blocking_portal(
            backend="asyncio", backend_options=backend_options()
        )
        self._portal = self._portal_cm.__enter__()
        try:
            client = Client(**self._kwargs)
            # The client's task group must live in one task from enter to exit.
            self._client_cm = self._portal.wrap_async_context_manager(client)
            self._client = self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._portal_cm is not None:
            self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        cm, client_cm = self._portal_cm, self._client_cm
        self._portal = self._portal_cm = self._client = self._client_cm = None
        if cm is not None:
            try:
                if client_cm is not None:
                    client_cm.__exit__(None, None, None)
            finally:
                cm.__exit__(None, None, None)

    def _require(self) -> tuple[BlockingPortal, Client]:
        if self._portal is None or self._client is None:
            from ..protocol.errors import ClientStateError

            raise ClientStateError("Use the SyncClient inside a `with` block.")
        return self._portal, self._client

    def _one_shot(self, fn: Callable[[BlockingPortal, Client], T]) -> T:
        """Run ``fn`` in the open session, or in one opened and closed for this call."""
        if self._portal is not None or self._closed:
            return fn(*self._require())
        self._open()
        try:
            return fn(*self._require())
        finally:
            self._shutdown()

    def run(self, job: Job, **kwargs: Any) -> JobResult:
        return self._one_shot(lambda portal, c: portal.call(lambda: c.run(job, **kwargs)))

    def map(self, jobs: Iterable[Job], **kwargs: Any) -> list[Any]:
        return self._one_shot(lambda portal, c: portal.call(lambda: c.map(jobs, **kwargs)))

    def wait_for_peers(
        self, capability: str, count: int = 1, wait_s: float = 10.0, *, settle_s: float = 0.0
    ) -> int:
        portal, client = self._require()
        return portal.call(
            lambda: client.wait_for_peers(capability, count, wait_s, settle_s=settle_s)
        )

    def costs(self) -> CostReport:
        return self._require()[1].costs()
