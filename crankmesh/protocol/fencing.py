"""At most once across pauses and drains: when an executor must not deliver (RFC 0001 §10.7).

An originator ends an attempt -- and may assign the job to someone else -- when the
assignment's ``deadline`` passes, or when the executor's newest Advert expires in its
directory (the executor looks dead).  An executor that was paused (SIGSTOP, a VM
freeze, a long GC stall) cannot tell from inside a job that either happened, so it
checks both, exactly, before it starts a job and again before it signs the receipt:

* ``deadline``: ``now > assignment.deadline`` -- the originator has given up;
* ``presence``: the executor's advertised presence *lapsed* since it accepted the job:
  it published no Advert before the previous one's ``exp`` minus a margin (or the
  newest one's ``exp`` minus the margin has passed), so a directory may have dropped it.

A fenced job is never delivered: its sandbox is killed and, instead of a receipt, the
executor publishes a signed :class:`~crankmesh.protocol.messages.Reject` with reason
:data:`HANDED_BACK` on the receipt subject, so the originator reassigns at once.

Pure: fed timestamps, no clock of its own.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MARGIN_MS", "HANDED_BACK", "Presence", "fence_reason", "presence_margin_ms"]

#: Reject reason (RFC 0001 §8.9) of an executor that gives back a job it had accepted.
HANDED_BACK = "handed_back"

#: How long before its newest Advert's ``exp`` an executor counts its presence as lapsed
#: (room for the next Advert to travel, and for clock skew between peers).
DEFAULT_MARGIN_MS = 500


def presence_margin_ms(advert_interval_ms: int, advert_ttl_ms: int) -> int:
    """The margin for an advert cadence: :data:`DEFAULT_MARGIN_MS`, less where the TTL
    leaves less than twice that beyond the interval (a timely advert never lapses)."""
    return max(0, min(DEFAULT_MARGIN_MS, (advert_ttl_ms - advert_interval_ms) // 2))


class Presence:
    """The executor's advertised presence: the ``exp`` of its newest Advert and an epoch
    that moves on at every lapse.  A job remembers the epoch it was accepted in."""

    __slots__ = ("epoch", "exp", "lapses", "margin_ms")

    def __init__(self, margin_ms: int = DEFAULT_MARGIN_MS) -> None:
        self.margin_ms = margin_ms
        #: ``exp`` of the newest Advert published; None: this executor does not advertise
        #: (then only the deadline fences).
        self.exp: int | None = None
        self.epoch = 0
        self.lapses = 0

    def advertised(self, ts: int, exp: int) -> bool:
        """Record an Advert published at ``ts`` living until ``exp``; True when it comes
        after a lapse (every job accepted before it is to be fenced)."""
        lapsed = self.exp is not None and ts > self.exp - self.margin_ms
        if lapsed:
            self.epoch += 1
            self.lapses += 1
        self.exp = exp
        return lapsed

    def lapsed(self, now_ms: int, since_epoch: int) -> bool:
        """Whether presence lapsed since ``since_epoch``, or is lapsing now."""
        if self.exp is None:
            return False
        return self.epoch != since_epoch or now_ms > self.exp - self.margin_ms


def fence_reason(
    *, now_ms: int, deadline_ms: int, presence: Presence, accepted_epoch: int
) -> str | None:
    """Why a job accepted in ``accepted_epoch`` must not start or be delivered now (the
    ``detail`` of the hand-back), or None when it may."""
    if deadline_ms and now_ms > deadline_ms:
        return f"deadline: assignment deadline passed {now_ms - deadline_ms} ms ago"
    if presence.lapsed(now_ms, accepted_epoch):
        return "presence: this executor's adverts lapsed (it was paused or cut off)"
    return None
