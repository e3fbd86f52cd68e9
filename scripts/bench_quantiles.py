"""crankmesh's StreamingQuantiles against the ``ddsketch`` package: accuracy and cost.

Both sketches get the same latencies (µs; log-normal around 2 ms with a heavy tail, the
shape of job service times), at the same relative accuracy (1%).  Prints one JSON object:
the worst relative error of p50/p95/p99 against the exact nearest-rank quantile, µs per
``add``, µs per quantile query and per p50+p95+p99 summary, and the wire size of each sketch
(crankmesh's canonical-MessagePack form; ddsketch's protobuf form when ``protobuf`` is
installed, else ``null``).

Usage: ``python scripts/bench_quantiles.py [--samples N] [--seed S]``
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

from ddsketch import DDSketch

from crankmesh.executor.quantiles import StreamingQuantiles
from crankmesh.protocol.encoding import canonical_encode

QS = (0.5, 0.95, 0.99)


def _exact(sorted_values: list[int], q: float) -> int:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _per_call_us(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    values = [
        max(1, int(rng.lognormvariate(math.log(2000), 0.6)))
        if rng.random() > 0.02
        else int(rng.uniform(50_000, 2_000_000))
        for _ in range(args.samples)
    ]
    exact = sorted(values)

    ours = StreamingQuantiles(alpha=0.01)
    theirs = DDSketch(relative_accuracy=0.01)
    t0 = time.perf_counter()
    for v in values:
        ours.add(v)
    ours_add = (time.perf_counter() - t0) / len(values) * 1e6
    t0 = time.perf_counter()
    for v in values:
        theirs.add(v)
    theirs_add = (time.perf_counter() - t0) / len(values) * 1e6

    def worst_error(get: Callable[[float], float | None]) -> float:
        errs = []
        for q in QS:
            got = get(q)
            assert got is not None
            errs.append(abs(got - _exact(exact, q)) / _exact(exact, q))
        return max(errs)

    try:
        from ddsketch.pb.proto import DDSketchProto

        theirs_wire: int | None = len(DDSketchProto.to_proto(theirs).SerializeToString())
    except Exception:  # protobuf is an optional extra of ddsketch
        theirs_wire = None
    n = 2000
    out = {
        "samples": len(values),
        "relative_accuracy": 0.01,
        "crankmesh": {
            "worst_rel_error_p50_p95_p99": round(worst_error(ours.quantile), 5),
            "add_us": round(ours_add, 3),
            "quantile_us": round(_per_call_us(lambda: ours.quantile(0.99), n), 2),
            "summary_us": round(_per_call_us(lambda: ours.quantiles(QS), n), 2),
            "wire_bytes": len(canonical_encode(ours.to_wire())),
            "integer_results": True,
            "sliding_window": True,
        },
        "ddsketch": {
            "worst_rel_error_p50_p95_p99": round(worst_error(theirs.get_quantile_value), 5),
            "add_us": round(theirs_add, 3),
            "quantile_us": round(_per_call_us(lambda: theirs.get_quantile_value(0.99), n), 2),
            "summary_us": round(
                _per_call_us(lambda: [theirs.get_quantile_value(q) for q in QS], n), 2
            ),
            "wire_bytes": theirs_wire,
            "integer_results": False,
            "sliding_window": False,
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
