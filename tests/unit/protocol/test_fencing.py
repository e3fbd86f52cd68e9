"""The at-most-once rule (RFC 0001 §10.7) as a pure function of timestamps."""

from __future__ import annotations

from crankmesh.protocol.fencing import (
    DEFAULT_MARGIN_MS,
    HANDED_BACK,
    Presence,
    fence_reason,
    presence_margin_ms,
)


def test_the_reject_reason_is_a_wire_token() -> None:
    assert HANDED_BACK == "handed_back"


def test_margin_follows_the_advert_cadence() -> None:
    assert presence_margin_ms(1000, 5000) == DEFAULT_MARGIN_MS
    assert presence_margin_ms(1000, 1600) == 300
    assert presence_margin_ms(1000, 1000) == 0


def test_timely_adverts_keep_the_epoch() -> None:
    p = Presence(margin_ms=500)
    assert p.advertised(0, 5000) is False  # the first advert is no lapse
    for t in range(1000, 10_000, 1000):
        assert p.advertised(t, t + 5000) is False
    assert p.epoch == 0 and p.lapses == 0
    assert not p.lapsed(9500, 0)


def test_an_advert_after_the_previous_one_expired_is_a_lapse() -> None:
    p = Presence(margin_ms=500)
    p.advertised(0, 5000)
    assert p.advertised(4600, 9600) is True  # within the margin of exp: a lapse
    assert p.epoch == 1 and p.lapses == 1
    assert p.lapsed(4700, 0)  # a job accepted before the lapse
    assert not p.lapsed(4700, 1)  # one accepted after it


def test_presence_lapses_when_the_newest_advert_is_about_to_expire() -> None:
    p = Presence(margin_ms=500)
    p.advertised(0, 5000)
    assert not p.lapsed(4500, 0)
    assert p.lapsed(4501, 0)  # no advert yet, but a directory may drop it any moment


def test_an_executor_that_does_not_advertise_is_fenced_by_the_deadline_only() -> None:
    p = Presence()
    assert not p.lapsed(10**12, 0)
    assert fence_reason(now_ms=100, deadline_ms=100, presence=p, accepted_epoch=0) is None
    why = fence_reason(now_ms=101, deadline_ms=100, presence=p, accepted_epoch=0)
    assert why is not None and why.startswith("deadline:") and "1 ms ago" in why
    # deadline 0: none (a job without one)
    assert fence_reason(now_ms=10**12, deadline_ms=0, presence=p, accepted_epoch=0) is None


def test_fence_reason_names_the_presence_lapse() -> None:
    p = Presence(margin_ms=500)
    p.advertised(0, 5000)
    p.advertised(20_000, 25_000)
    why = fence_reason(now_ms=20_001, deadline_ms=30_000, presence=p, accepted_epoch=0)
    assert why is not None and why.startswith("presence:")
    assert fence_reason(now_ms=20_001, deadline_ms=30_000, presence=p, accepted_epoch=1) is None
