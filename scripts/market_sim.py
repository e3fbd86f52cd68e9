#!/usr/bin/env python3
"""Selection quality against an omniscient oracle, with liars and grifters (issue 18 item 4).

A discrete-event simulation in simulated time of one originator buying jobs from a market of
heterogeneous executors (speed ×1–×10, prices, capacities 1–4) at a given offered load, some of
them dishonest (one per misbehaviour class). Everything that decides is the real code:

* selection: :func:`crankmesh.market.select` with the real policies, filters and tie-breaks on
  :class:`crankmesh.market.Candidate` built as the client builds them;
* service time, overhead estimate, reputation: :class:`crankmesh.market.OverheadEstimator`,
  :func:`crankmesh.market.service_time_us`, :class:`crankmesh.market.LocalReputation`;
* misbehaviour counting and exclusion: :class:`crankmesh.originator.conduct.ConductBook` and
  :func:`~crankmesh.originator.conduct.failure_kind`, with the failure outcomes the client
  produces; canary rounds apply the rules of :class:`crankmesh.verification.CanaryProber`
  (a wrong answer or a broken commitment excludes; a service time above 3 × the advertised
  p95 twice in a row excludes; a clean pass readmits).

What is simulated: arrivals (Poisson), each job's size (one lognormal draw shared by every
executor, so the oracle and the policies face the same jobs), FIFO queues with ``capacity``
servers, the network (≈1 ms round trip with jitter), and the executors' behaviour.

Prints one JSON object per (load, policy): mean and p95 response time, cost per job, fraction
of jobs meeting their SLO, the same for the matching oracle (``latency``: the executor with
the least expected completion time; every other policy: the cheapest executor whose p95
completion time meets the job's SLO, else the fastest; the oracle knows every executor's true
service time distribution, price and exact queue), how long each dishonest executor lasted (its
jobs, probe rounds, whether excluded) and the honest executors wrongly excluded. A last object
sums up the acceptance checks at 80 % load.

Honest executors here quote their promises at the current load (service quantile plus their
exact queue wait), which is what RFC 0002 §6.1's judgement assumes of a promise.

    python scripts/market_sim.py [--jobs 3000] [--seed 1] [--loads 0.5,0.8]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from crankmesh import market
from crankmesh.observability import Metrics
from crankmesh.originator.conduct import ConductBook, failure_kind

BASE_US = 2_000  # service time of a ×1 executor for a job of size 1
SIZE_SIGMA = 0.3  # lognormal spread of job sizes
RTT_US = 1_000  # network round trip (plus both sides' protocol work)
PROBE_INTERVAL_US = 20_000  # simulated time is compressed: ~200 jobs per probe interval
JOB_TIMEOUT_US = 100_000  # an accepted job with no receipt by then has failed
SLO_US = 40_000  # every job's p95 SLO (honest ×1–×6 executors meet it when not queued)
CANARY_SLOW_FACTOR = 3.0
QUEUE_DEPTH_FACTOR = 4  # queue depth = 4 × concurrency, as the agent's defaults (8 / 2)
POLICIES = ("latency", "slo", "cost", "balanced", "greedy")

DISHONEST = (
    "under_promising",  # promises p50/p95 10 × below its real service time
    "wrong_answers",  # answers every job wrongly (only canaries can tell)
    "no_delivery",  # accepts, then never delivers
    "invalid_delivery",  # answers the assignment with garbage
    "capacity_griefing",  # bids, then rejects every assignment
    "overcharge",  # bids cheap, charges 3 × in its receipt
)


@dataclass
class Executor:
    name: str
    speed: float  # service time multiplier (1 = fastest)
    capacity: int
    price: int
    behaviour: str = "honest"
    free_at: list[int] = field(default_factory=list)  # per server: busy until (µs)
    starts: deque[tuple[int, int]] = field(default_factory=deque)  # (start, finish) of jobs

    @property
    def honest(self) -> bool:
        return self.behaviour == "honest"

    def true_p(self, q: float) -> int:
        """True quantile of its service time (lognormal job sizes)."""
        z = {0.5: 0.0, 0.95: 1.6449, 0.99: 2.3263}[q]
        return int(BASE_US * self.speed * math.exp(z * SIZE_SIGMA))

    def wait_at(self, t: int) -> int:
        """How long a job arriving at ``t`` would queue (the executor knows its queue)."""
        return self.start_time(t)[1] - t

    def promise(self, q: float, t: int) -> int:
        """What its bid quotes at ``t``: the service quantile at the current load (its queue
        wait plus the service quantile: what the executor measures as service time)."""
        p = self.true_p(q) + self.wait_at(t)
        return max(1, p // 10) if self.behaviour == "under_promising" else p

    def load_at(self, t: int) -> tuple[int, int]:
        """(running, queued) at time ``t``."""
        while self.starts and self.starts[0][1] <= t:
            self.starts.popleft()
        running = sum(1 for s, f in self.starts if s <= t < f)
        queued = sum(1 for s, _ in self.starts if s > t)
        return running, queued

    def start_time(self, t: int) -> tuple[int, int]:
        """(server index, start) for a job arriving at ``t`` (FIFO, earliest free server)."""
        i = min(range(self.capacity), key=lambda k: self.free_at[k])
        return i, max(t, self.free_at[i])

    def serve(self, t: int, service: int) -> int:
        i, start = self.start_time(t)
        finish = start + service
        self.free_at[i] = finish
        self.starts.append((start, finish))
        return finish

    def charge(self) -> int:
        return self.price * 3 if self.behaviour == "overcharge" else self.price


def build_market(rng: random.Random) -> list[Executor]:
    execs: list[Executor] = []
    for i in range(14):
        speed = 1 + 9 * i / 13  # ×1 … ×10
        cap = rng.choice((1, 2, 2, 4))
        # faster is dearer, with noise; a price per job in µUSD
        price = int((300 + 2400 / speed) * rng.uniform(0.85, 1.15))
        execs.append(Executor(f"honest-{i:02d}-x{speed:.1f}", speed, cap, price))
    for kind in DISHONEST:
        # dishonest ones look attractive: fast-ish, cheapest
        execs.append(Executor(f"{kind}", 2.0, 2, 150, kind))
    for e in execs:
        e.free_at = [0] * e.capacity
    return execs


@dataclass
class Job:
    arrival: int
    size: float
    rtts: list[int]


def make_jobs(rng: random.Random, execs: list[Executor], load: float, n: int) -> list[Job]:
    honest = [e for e in execs if e.honest]
    mean_size = math.exp(SIZE_SIGMA**2 / 2)
    # jobs per µs the honest pool serves at full use
    throughput = sum(e.capacity / (BASE_US * e.speed * mean_size) for e in honest)
    rate = load * throughput
    t = 0.0
    jobs = []
    for _ in range(n):
        t += rng.expovariate(rate)
        jobs.append(
            Job(
                int(t),
                rng.lognormvariate(0.0, SIZE_SIGMA),
                [int(RTT_US * rng.lognormvariate(0.0, 0.2)) for _ in range(6)],
            )
        )
    return jobs


@dataclass
class Outcome:
    response_us: list[int] = field(default_factory=list)
    cost: int = 0
    slo_met: int = 0
    jobs: int = 0
    assigned: dict[str, int] = field(default_factory=dict)
    last_assigned_us: dict[str, int] = field(default_factory=dict)
    excluded_at_us: dict[str, int] = field(default_factory=dict)
    jobs_before_out: dict[str, int] = field(default_factory=dict)
    wrongly_excluded: set[str] = field(default_factory=set)
    wrong_results: int = 0


class Originator:
    """The client's bookkeeping, with the client's real building blocks."""

    def __init__(self) -> None:
        self.overhead = market.OverheadEstimator()
        self.reputation: dict[str, market.LocalReputation] = {}
        self.observed: dict[str, deque[int]] = {}
        self.conduct = ConductBook(Metrics())
        self.excluded: dict[str, str] = {}
        self.slow_strikes: dict[str, int] = {}

    def observed_p95(self, name: str, promised: int) -> int | None:
        """As ``Client._observed_p95``: promised × p95(service / promise) of past jobs."""
        w = self.observed.get(name)
        if w is None or len(w) < 5:
            return None
        s = sorted(w)
        return promised * s[min(len(s), max(1, math.ceil(0.95 * len(s)))) - 1] // 1000

    def score(self, name: str) -> float | None:
        if name in self.excluded:
            return 0.0
        rep = self.reputation.get(name)
        return None if rep is None else rep.score

    def record(
        self,
        e: Executor,
        *,
        success: bool,
        service: int | None,
        promised_p95: int = 0,
        failure: str | None = None,
        misbehaviour: str | None = None,
    ) -> str | None:
        """As ``Client._record_outcome``; returns an exclusion reason when one trips."""
        slo_met = None
        if service is not None:
            w = self.observed.setdefault(e.name, deque(maxlen=256))
            w.append(service * 1000 // max(1, promised_p95))
            slo_met = service <= promised_p95
        reason = None
        kind = misbehaviour if failure is None else failure_kind(failure)
        if failure is None or kind is not None:
            reason = self.conduct.commitment(e.name, "sim", kind) or reason
        if service is not None:
            reason = self.conduct.promise(e.name, "sim", service, promised_p95) or reason
        rep = self.reputation.get(e.name) or market.LocalReputation()
        self.reputation[e.name] = rep.record(success=success, slo_met=slo_met)
        if reason is not None:
            self.excluded[e.name] = reason
        return reason


def candidates(
    execs: list[Executor], orig: Originator | None, t: int, skip: set[str]
) -> list[market.Candidate]:
    out = []
    for i, e in enumerate(execs):
        if e.name in skip:
            continue
        running, queued = e.load_at(t)
        if running + queued >= e.capacity * (1 + QUEUE_DEPTH_FACTOR):
            continue  # full: an executor bids only with capacity to serve (RFC 0001 §10.2)
        p50 = e.promise(0.5, t)
        if e.behaviour == "capacity_griefing":
            running = queued = 0  # it always claims to be idle
            p50 = e.true_p(0.5)
        out.append(
            market.Candidate(
                bid_cid=f"bid-{e.name}",
                executor=e.name,
                price_micros=e.price,
                currency="USD",
                p50_us=p50,
                p95_us=e.promise(0.95, t),
                p99_us=e.promise(0.99, t),
                running=running,
                queued=queued,
                capacity=e.capacity,
                # the quote at the current load already includes its queue wait
                est_latency_us=p50,
                network_rtt_us=orig.overhead.typical(e.name) if orig else None,
                observed_p95_us=orig.observed_p95(e.name, e.promise(0.95, t)) if orig else None,
                reputation=orig.score(e.name) if orig else None,
                expires_ms=t // 1000 + 10_000,
                arrival=i,
            )
        )
    return out


def oracle_pick(execs: list[Executor], job: Job, t: int, policy: str) -> tuple[Executor, int]:
    """The omniscient choice among honest executors: it knows every executor's true service
    time distribution, true price and exact queue (not the size of the job at hand, which
    nobody knows before running it). ``latency``: least expected completion; otherwise the
    cheapest whose true p95 completion meets the SLO (else the least expected completion).
    Returns the executor and this job's actual response time there."""
    mean_size = math.exp(SIZE_SIGMA**2 / 2)
    best: tuple[Any, ...] | None = None
    for e in execs:
        if not e.honest:
            continue
        arrive = t + job.rtts[0] // 2
        wait = e.start_time(arrive)[1] - arrive
        expected = wait + BASE_US * e.speed * mean_size + job.rtts[0]
        p95_done = wait + e.true_p(0.95) + job.rtts[0]
        if policy == "latency" or p95_done > SLO_US:
            key: tuple[Any, ...] = (1, expected, e.price)
        else:
            key = (0, e.price, expected)
        if policy == "latency":
            key = (expected, e.price)
        if best is None or key < best[0]:
            best = (key, e, wait)
    assert best is not None
    e, wait = best[1], best[2]
    return e, wait + int(BASE_US * e.speed * job.size) + job.rtts[0]


def run(policy: str, load: float, n: int, seed: int, oracle: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    execs = build_market(rng)
    by_name = {e.name: e for e in execs}
    jobs = make_jobs(rng, execs, load, n)
    out = Outcome()
    orig = Originator()
    # (time, seq, executor, what, metered service, promised p95)
    pending: list[tuple[int, int, str, str, int, int]] = []
    seq = 0
    next_probe = PROBE_INTERVAL_US
    probe_rounds = 0

    def settle(now: int) -> None:
        while pending and pending[0][0] <= now:
            _, _, name, what, service, promised = heapq.heappop(pending)
            e = by_name[name]
            if what == "ok":
                observed = service + RTT_US
                est = orig.overhead.add(name, observed, service)
                orig.record(
                    e,
                    success=True,
                    service=market.service_time_us(observed, service, est),
                    promised_p95=promised,
                    misbehaviour="overcharge" if e.behaviour == "overcharge" else None,
                )
            else:
                orig.record(e, success=False, service=None, failure=what)
            if e.name in orig.excluded:
                out.excluded_at_us.setdefault(e.name, now)
                out.jobs_before_out.setdefault(e.name, out.assigned.get(e.name, 0))

    def probe(now: int) -> None:
        """One canary round (CanaryProber's rules, on each executor)."""
        for e in execs:
            if e.behaviour in ("no_delivery", "invalid_delivery", "capacity_griefing"):
                continue  # the canary does not run: no verdict either way
            problem = None
            if e.behaviour == "wrong_answers":
                problem = "wrong answer"
            elif e.behaviour == "overcharge":
                problem = "overcharge"
            # the canary is a job like any other: it queues, then takes a typical service
            service = e.wait_at(now) + int(BASE_US * e.speed)
            if problem is None and service > e.promise(0.95, now) * CANARY_SLOW_FACTOR:
                orig.slow_strikes[e.name] = orig.slow_strikes.get(e.name, 0) + 1
                if orig.slow_strikes[e.name] >= 2:
                    problem = "slow"
            elif problem is None:
                orig.slow_strikes.pop(e.name, None)
            if problem is not None:
                orig.excluded[e.name] = f"failed canary: {problem}"
                out.excluded_at_us.setdefault(e.name, now)
                out.jobs_before_out.setdefault(e.name, out.assigned.get(e.name, 0))
            elif e.name not in orig.slow_strikes:
                orig.excluded.pop(e.name, None)

    for job in jobs:
        t = job.arrival
        while not oracle and next_probe <= t:
            settle(next_probe)
            probe(next_probe)
            probe_rounds += 1
            next_probe += PROBE_INTERVAL_US
        settle(t)
        if oracle:
            e, done = oracle_pick(execs, job, t, policy)
            service = int(BASE_US * e.speed * job.size)
            e.serve(t + job.rtts[0] // 2, service)
            out.response_us.append(done)
            out.cost += e.charge()
            out.slo_met += done <= SLO_US
            out.jobs += 1
            out.assigned[e.name] = out.assigned.get(e.name, 0) + 1
            continue
        now, tried, attempt = t, set(), 0
        while True:
            cands = candidates(execs, orig, now, tried)
            terms = market.Terms(
                currency="USD",
                min_reputation=0.05,
                slo_p95_us=SLO_US if policy == "slo" else None,
            )
            ranking = market.select(cands, terms, policy, now // 1000)
            winner = ranking.winner
            if winner is None and policy == "slo":  # nothing meets the SLO: fastest then
                ranking = market.select(cands, terms.__class__(currency="USD"), "latency", 0)
                winner = ranking.winner
            if winner is None:
                # every executor tried or excluded: the job fails after its timeout
                out.response_us.append(now - t + JOB_TIMEOUT_US)
                out.jobs += 1
                break
            e = by_name[winner.executor]
            tried.add(e.name)
            out.assigned[e.name] = out.assigned.get(e.name, 0) + 1
            out.last_assigned_us[e.name] = now
            rtt = job.rtts[min(attempt, len(job.rtts) - 1)]
            attempt += 1
            seq += 1
            if e.behaviour == "capacity_griefing":
                now += rtt
                heapq.heappush(pending, (now, seq, e.name, "rejected: no_capacity", 0, 0))
                settle(now)
                continue
            if e.behaviour == "invalid_delivery":
                now += rtt
                heapq.heappush(pending, (now, seq, e.name, "bad_accept: garbage", 0, 0))
                settle(now)
                continue
            service = int(BASE_US * e.speed * job.size)
            if e.behaviour == "no_delivery":
                e.serve(now + rtt // 2, service)  # it holds the slot, then says nothing
                now += JOB_TIMEOUT_US
                heapq.heappush(pending, (now, seq, e.name, "no_receipt: none in time", 0, 0))
                settle(now)
                continue
            promised = winner.p95_us or 0
            finish = e.serve(now + rtt // 2, service)
            done = finish + rtt // 2
            heapq.heappush(pending, (done, seq, e.name, "ok", done - now - rtt, promised))
            out.response_us.append(done - t)
            out.cost += min(e.charge(), e.price)  # the settlement pays the bid, never more
            out.slo_met += done - t <= SLO_US
            out.jobs += 1
            out.wrong_results += e.behaviour == "wrong_answers"
            break
    settle(10**15)
    for name in orig.excluded:
        if by_name[name].honest:
            out.wrongly_excluded.add(name)
    resp = sorted(out.response_us)
    result: dict[str, Any] = {
        "mean_response_us": round(sum(resp) / len(resp)),
        "p95_response_us": resp[math.ceil(0.95 * len(resp)) - 1],
        "cost_per_job_micros": round(out.cost / out.jobs),
        "slo_met": round(out.slo_met / out.jobs, 4),
    }
    if not oracle:
        lasted = {}
        for kind in DISHONEST:
            jobs_to_it = out.assigned.get(kind, 0)
            last = out.last_assigned_us.get(kind)
            excl = out.excluded_at_us.get(kind)
            out_at = excl if excl is not None else (last if last is not None else 0)
            lasted[kind] = {
                # its jobs until it was first excluded (or all it got, if never excluded)
                "jobs": out.jobs_before_out.get(kind, jobs_to_it),
                "jobs_total": jobs_to_it,
                "probe_rounds": out_at // PROBE_INTERVAL_US,
                "excluded": kind in orig.excluded,
                "out_at_ms": out_at // 1000,
            }
        result["dishonest"] = lasted
        result["wrong_results"] = out.wrong_results
        result["honest_wrongly_excluded"] = sorted(out.wrongly_excluded)
        result["probe_rounds"] = probe_rounds
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3000, help="jobs per run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loads", default="0.5,0.8", help="offered loads, comma-separated")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args(argv)
    loads = [float(x) for x in args.loads.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    checks: dict[str, Any] = {}
    for load in loads:
        oracles = {
            kind: run(kind, load, args.jobs, args.seed, oracle=True) for kind in ("latency", "slo")
        }
        for policy in policies:
            res = run(policy, load, args.jobs, args.seed, oracle=False)
            orc = oracles["latency" if policy == "latency" else "slo"]
            res = {"load": load, "policy": policy, "jobs": args.jobs, **res, "oracle": orc}
            res["mean_vs_oracle"] = round(res["mean_response_us"] / orc["mean_response_us"], 3)
            res["cost_vs_oracle"] = round(
                res["cost_per_job_micros"] / orc["cost_per_job_micros"], 3
            )
            print(json.dumps(res, sort_keys=True))
            if load == 0.8:
                dis = res["dishonest"].values()
                checks[policy] = {
                    # out by its 20th job, or by the 2nd probe round
                    "dishonest_out_within_20_jobs_or_2_probes": all(
                        d["jobs"] <= 20 or d["probe_rounds"] <= 2 for d in dis
                    ),
                    # out by whichever of the two comes first
                    "dishonest_out_within_both": all(
                        d["jobs"] <= 20 and d["probe_rounds"] <= 2 for d in dis
                    ),
                    "honest_excluded": len(res["honest_wrongly_excluded"]),
                }
                if policy == "latency":
                    checks[policy]["mean_within_10pct_of_oracle"] = res["mean_vs_oracle"] <= 1.10
                if policy == "slo":
                    checks[policy]["slo_met_ge_95pct"] = res["slo_met"] >= 0.95
                    checks[policy]["cost_within_10pct_of_oracle"] = res["cost_vs_oracle"] <= 1.10
    if checks:
        informative = ("honest_excluded", "dishonest_out_within_both")
        ok = all(v for c in checks.values() for k, v in c.items() if k not in informative) and all(
            c["honest_excluded"] == 0 for c in checks.values()
        )
        print(json.dumps({"acceptance_at_80pct": checks, "ok": ok}, sort_keys=True))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
