"""Who may run code on a node whose sandbox cannot protect the node.

When the sandbox's self-test finds that a job could reach the node's key, memory,
signals or the network (:attr:`IsolationReport.features` ``protects_node`` false), the
node does not run strangers' code: :class:`AllowListedCapability` serves ``python.run``
only to an allow-list of originators (by default this node itself and its production
trust list) and declines everyone else with the reason ``originator_not_allowed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..protocol.messages import JobSpec
from .handlers import CapabilityHandler, Outcome

__all__ = ["NOT_ALLOWED", "AllowListedCapability"]

log = logging.getLogger("crankmesh.executor")

#: The decline reason for an originator that is not on the allow-list.
NOT_ALLOWED = "originator_not_allowed"


class AllowListedCapability:
    """``inner``, served only to originators ``allowed`` accepts.

    ``why`` says why the node restricts it (the sandbox's gaps); it is logged once and
    carried in the receipt's detail of a refused assignment.

    Error handling: an assignment from another originator that reaches :meth:`execute`
    (e.g. on a firm quote, without an announce) is refused with status ``error`` before
    any code runs.
    """

    def __init__(
        self, inner: CapabilityHandler, allowed: Callable[[str], bool], *, why: str
    ) -> None:
        self._inner = inner
        self._allowed = allowed
        self.why = why

    @property
    def name(self) -> str:
        return self._inner.name

    def check(self, job: JobSpec) -> str | None:
        if not self._allowed(job.originator):
            return NOT_ALLOWED
        return self._inner.check(job)

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        if not self._allowed(job.originator):
            log.warning("refused %s from %s: %s", self.name, job.originator, self.why)
            return Outcome(
                "error",
                None,
                f"{NOT_ALLOWED}: this node serves {self.name} only to "
                f"allow-listed originators ({self.why})"[:1000],
            )
        return await self._inner.execute(job, payload)
