"""An executor's firm quotes (RFC 0001 §8.14): one signed Quote per capability.

:class:`QuoteBook` signs the quotes an executor publishes (inside its Advert, §8.15),
decides when they must be re-signed (price, load band, draining state or hardware
changed, or the quote is about to expire), and remembers every quote it signed
lately by CID, so that an Assignment naming one can be honoured at exactly the price
quoted.  It does no I/O and reads no clock: callers pass ``now`` (ms).

Resource handling: quotes are kept for ``keep_ms`` after they expire, then forgotten
(an Assignment on a forgotten quote is rejected ``quote_unknown``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..protocol.envelope import Envelope
from ..protocol.identity import Identity
from ..protocol.messages import BidSlo, JobSpec, Load, Quote, QuoteTerms

__all__ = [
    "DEFAULT_QUOTE_VALID_MS",
    "QuoteBook",
    "SignedQuote",
    "check_quote_assignment",
    "load_band",
]

#: Seed 000's ``valid_for``: how long a quote stands (reference 15 s).
DEFAULT_QUOTE_VALID_MS = 15_000
#: Quotes signed are remembered this long after their ``exp`` (RFC 0001 §8.14 step 1).
KEEP_AFTER_EXP_MS = 120_000
#: Bound on the quotes remembered (oldest first out), whatever the churn.
MAX_KEPT = 4096


def load_band(load: Load, capacity: int) -> int:
    """The load band a quote is valid for: 0 idle, 1 under half, 2 at least half of
    the slots taken, 3 full (running + queued at ``capacity``).  A quote is re-signed
    when the band changes, not on every job."""
    used = load.running + load.queued
    if used <= 0:
        return 0
    if used >= capacity:
        return 3
    return 1 if used * 2 < capacity else 2


@dataclass(frozen=True, slots=True)
class SignedQuote:
    """A quote this executor signed: the model, its envelope bytes and CID."""

    quote: Quote
    raw: bytes
    cid: str
    #: What it was made from, to tell whether it must be re-signed.
    key: tuple[Any, ...]


class QuoteBook:
    """Signs, renews and remembers an executor's quotes (see the module docstring).

    ``valid_ms`` is each quote's life (``exp - ts``); a quote is renewed once less
    than ``renew_ms`` of it is left (default: a third of ``valid_ms``).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        valid_ms: int = DEFAULT_QUOTE_VALID_MS,
        renew_ms: int | None = None,
        keep_ms: int = KEEP_AFTER_EXP_MS,
    ) -> None:
        if valid_ms < 1:
            raise ValueError(f"quote validity must be at least 1 ms, got {valid_ms}")
        self.identity = identity
        self.valid_ms = valid_ms
        self.renew_ms = valid_ms // 3 if renew_ms is None else renew_ms
        self.keep_ms = keep_ms
        self._seq = 0
        self._current: dict[str, SignedQuote] = {}
        self._by_cid: OrderedDict[str, SignedQuote] = OrderedDict()

    def current(self, capability: str) -> SignedQuote | None:
        return self._current.get(capability)

    def get(self, cid: str, now: int) -> SignedQuote | None:
        """A quote this executor signed, by CID; ``None`` when unknown or forgotten."""
        self._forget(now)
        return self._by_cid.get(cid)

    def quote(
        self,
        capability: str,
        *,
        now: int,
        price: int,
        currency: str,
        slo: Callable[[], BidSlo],
        load: Load,
        band: int,
        isolation: str,
        terms: QuoteTerms,
        draining: bool,
        hardware: Any,
    ) -> SignedQuote | None:
        """The quote to publish for ``capability`` now: the current one when it still
        stands for these facts and has more than ``renew_ms`` left, else a new one.
        ``None`` while draining (a draining executor quotes nothing).  ``hardware`` is
        any value that changes when the hardware does (it is compared, not sent)."""
        if draining:
            self._current.pop(capability, None)
            return None
        key = (price, currency, band, isolation, terms, hardware)
        cur = self._current.get(capability)
        if cur is not None and cur.key == key and cur.quote.exp - now > self.renew_ms:
            return cur
        self._seq += 1
        q = Quote.build(  # own typed values: validated by the unit tests
            signer=self.identity.did,
            ts=now,
            capability=capability,
            price=price,
            currency=currency,
            slo=slo(),
            load=load,
            isolation=isolation,
            exp=now + self.valid_ms,
            seq=self._seq,
            terms=terms,
        )
        env: Envelope = q.sign(self.identity)
        signed = SignedQuote(q, env.raw, env.cid, key)
        self._current[capability] = signed
        self._by_cid[env.cid] = signed
        self._forget(now)
        return signed

    def _forget(self, now: int) -> None:
        kept = self._by_cid
        while kept:
            oldest = next(iter(kept.values()))
            if len(kept) > MAX_KEPT or oldest.quote.exp + self.keep_ms < now:
                kept.popitem(last=False)
            else:
                break


def check_quote_assignment(
    signed: SignedQuote | None,
    *,
    capability: str,
    job: JobSpec,
    now: int,
    max_skew_ms: int,
) -> tuple[str, str] | None:
    """Whether an Assignment on a quote may be honoured (RFC 0001 §8.14 steps 1-3):
    ``None``, or the Reject ``(reason, detail)``.  ``job`` is the assignment's JobSpec;
    capacity, caps, budget and payload are checked afterwards as for a bid."""
    if signed is None:
        return "quote_unknown", "this executor signed no such quote (or forgot it)"
    q = signed.quote
    if q.capability != capability:
        return "quote_unknown", f"quote {signed.cid} is for {q.capability}, the job is {capability}"
    if now > q.exp + max_skew_ms:
        return "quote_expired", f"quote {signed.cid} expired {now - q.exp} ms ago"
    misfit = q.terms.misfit(job)
    if misfit is not None:
        return "terms", misfit
    if job.max_price is not None and q.price > job.max_price:
        return "terms", f"terms: price {q.price} > max_price {job.max_price}"
    if job.currency != q.currency:
        return "terms", f"terms: currency {job.currency} != quoted {q.currency}"
    return None
