"""Promises quoted at the current load: idle unchanged, slower with concurrency, plus the wait."""

from __future__ import annotations

from crankmesh.executor.load_quote import load_factor, quote_at_load
from crankmesh.protocol.messages import BidSlo

SLO = BidSlo(p50_us=10_000, p95_us=20_000, p99_us=30_000, samples=50)


def test_an_idle_executor_quotes_its_profile() -> None:
    assert quote_at_load(SLO, running=0, queued=0, slots=2) == SLO
    assert quote_at_load(BidSlo(), running=5, queued=5, slots=1) == BidSlo()


def test_a_free_slot_quotes_the_load_sensitivity_at_that_concurrency() -> None:
    sens = {1: 10_000, 2: 15_000, 4: 30_000}
    q = quote_at_load(SLO, running=1, queued=0, slots=4, load_p50=sens)  # runs at 2
    assert (q.p50_us, q.p95_us, q.p99_us) == (15_000, 30_000, 45_000)
    assert load_factor(sens, 3) == 1.5 and load_factor(sens, 4) == 3.0
    assert load_factor(None, 4) == 1.0 and load_factor({2: 5}, 2) == 1.0


def test_full_slots_add_the_wait_for_the_jobs_ahead() -> None:
    # 2 slots busy, 1 queued: this job waits for 2 jobs to finish, 2 at a time
    q = quote_at_load(SLO, running=2, queued=1, slots=2)
    assert (q.p50_us, q.p95_us) == (10_000 + 10_000, 20_000 + 20_000)
    q = quote_at_load(SLO, running=2, queued=2, slots=2)
    assert q.p95_us == 20_000 + 30_000
    assert q.samples == SLO.samples
