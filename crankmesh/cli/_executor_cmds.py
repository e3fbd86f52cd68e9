"""``crankmesh capabilities`` and ``crankmesh bench``: what this machine offers and how fast.

Both take an :class:`argparse.Namespace`; every attribute except ``json`` is optional
(``getattr`` with the default shown), so the parser can grow them one at a time.

``cmd_capabilities(args)`` reads:
  - ``json`` (bool): one JSON object instead of text.
  - ``no_gpu`` (bool, False): skip GPU detection (and the torch import it needs).
  - ``storage_dir`` (str | None, None): scratch directory whose free space is advertised
    (default: the temp directory).

``cmd_bench(args)`` reads:
  - ``json`` (bool): one JSON object ``{capability: profile}`` instead of a table.
  - ``capabilities`` (str | None): comma-separated subset of ``echo``, ``python.run``,
    ``email.classify.spam-v1``, ``tensor.matmul`` (default: the first three).
  - ``runs`` (int, 30), ``warmup`` (int, 3), ``concurrency`` (str "1,2,4" or list of int),
    ``time_budget`` (float seconds per capability, 10.0).
  - ``max_concurrency`` (int, 2): sandbox slots for ``python.run``.
  - ``price_per_cpu_second`` / ``price_per_gpu_second`` / ``min_price`` (int micro-units,
    defaults 50 / 1000 / 1) and ``currency`` (str, "USD"): the cost model for unit costs.

Exit status: 0 on success; ``bench`` returns 1 when a capability could not be benchmarked
(its sandbox did not start, or none of its jobs succeeded).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any

from .._loop import run as run_loop

__all__ = ["cmd_bench", "cmd_capabilities"]

DEFAULT_BENCH = ("echo", "python.run", "email.classify.spam-v1")
KNOWN_BENCH = (*DEFAULT_BENCH, "tensor.matmul")


def _available_profiles() -> tuple[str, ...]:
    """Env profiles the sandbox would offer (python-ml needs torch and numpy installed)."""
    ml = all(importlib.util.find_spec(m) is not None for m in ("torch", "numpy"))
    return ("python-core", "python-ml") if ml else ("python-core",)


def _capability_names() -> list[str]:
    names = ["echo", "python.run", "email.classify.spam-v1"]
    if importlib.util.find_spec("torch") is not None:
        names.append("tensor.matmul")
    return names


def _describe_offer(wire: dict[str, Any]) -> list[str]:
    cpu = wire.get("cpu", {})
    lines = [
        f"  cpu:        {cpu.get('cores', '?')} cores {cpu.get('arch', '?')}"
        + (f" ({', '.join(cpu['features'])})" if cpu.get("features") else ""),
        f"  memory:     {wire.get('memory_mb', '?')} MiB",
    ]
    storage = wire.get("storage", {})
    if storage:
        kind = f" ({storage['type']})" if "type" in storage else ""
        lines.append(f"  storage:    {storage.get('free_mb', '?')} MiB free{kind}")
    gpus = wire.get("gpus", [])
    if not gpus:
        lines.append("  gpus:       none")
    for g in gpus:
        cc = f", compute {g['compute_capability']}" if "compute_capability" in g else ""
        free = f", {g['free_memory_mb']} MiB free" if "free_memory_mb" in g else ""
        busy = " [busy]" if g.get("busy") else ""
        lines.append(
            f"  gpu {g['index']}:      {g['type']} {g.get('model', '')}"
            f" {g.get('memory_mb', '?')} MiB{free}{cc}{busy}"
        )
    fw = wire.get("frameworks", {})
    lines.append(
        "  frameworks: " + (", ".join(f"{k} {v}" for k, v in fw.items()) if fw else "none")
    )
    codecs = wire.get("codecs", {})
    lines.append(
        "  codecs:     "
        + (", ".join(f"{k} ({v})" for k, v in codecs.items()) if codecs else "none")
    )
    lines.append(f"  profiles:   {', '.join(wire.get('env_profiles', [])) or 'none'}")
    lines.append(f"  isolation:  {wire.get('isolation', 'none')}")
    return lines


def cmd_capabilities(args: argparse.Namespace) -> int:
    """Print what this machine would advertise: hardware offer, capabilities, isolation."""
    from ..executor.hardware import detect_hardware
    from ..executor.sandbox import detect_isolation

    report = detect_isolation()
    offer = detect_hardware(
        include_gpu=not getattr(args, "no_gpu", False),
        storage_dir=getattr(args, "storage_dir", None),
        env_profiles=_available_profiles(),
        isolation=report.level.token,
    )
    wire = offer.to_wire()
    capabilities = _capability_names()
    protects = report.features.get("protects_node", False)
    python_run = (
        "served to any originator: jobs cannot reach the node's key, memory, signals or network"
        if protects
        else "served only to allow-listed originators (this node, its trust list, "
        "python_run_allow), advertised with isolation 'none': the sandbox cannot protect "
        "the node: " + "; ".join(n for n in report.notes if n.startswith("unprotected node"))
    )
    isolation = {
        "features": dict(sorted(report.features.items())),
        "level": report.level.token,
        "notes": list(report.notes),
        "protects_node": protects,
        "python_run": python_run,
    }
    if args.json:
        doc = {"capabilities": capabilities, "hardware": wire, "isolation": isolation}
        print(json.dumps(doc, sort_keys=True))
        return 0
    print("hardware:")
    for line in _describe_offer(wire):
        print(line)
    print(f"capabilities: {', '.join(capabilities)}")
    print(str(report))
    print(f"python.run: {python_run}")
    return 0


# ----------------------------------------------------------------------------- bench


def _levels(value: object) -> tuple[int, ...]:
    if value is None:
        return (1, 2, 4)
    if isinstance(value, str):
        return tuple(int(part) for part in value.split(",") if part.strip())
    if isinstance(value, Sequence):
        return tuple(int(v) for v in value)
    raise ValueError(f"concurrency must be like '1,2,4', got {value!r}")


def _us(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1000:
        return f"{value}µs"
    if value < 1_000_000:
        return f"{value / 1000:.1f}ms"
    return f"{value / 1_000_000:.2f}s"


def _table(profiles: dict[str, dict[str, Any]]) -> str:
    from .._tables import render_table

    header = ("capability", "p50", "p95", "p99", "jobs/s", "accuracy", "cost", "samples",
              "load p50 by concurrency")  # fmt: skip
    rows = []
    for name, p in profiles.items():
        tput = p.get("throughput_mjps")
        acc = p.get("accuracy_ppm")
        load = p.get("load_p50_us", {})
        rows.append(
            (
                name,
                _us(p.get("p50_us")),
                _us(p.get("p95_us")),
                _us(p.get("p99_us")),
                "-" if tput is None else f"{tput / 1000:.1f}",
                "-" if acc is None else f"{acc / 10_000:.1f}%",
                str(p.get("unit_cost", "-")),
                str(p.get("samples", 0)),
                " ".join(f"c{c}={_us(v)}" for c, v in load.items()),
            )
        )
    return render_table(header, rows, right=range(1, 8))


def cmd_bench(args: argparse.Namespace) -> int:
    """Self-benchmark the built-in capabilities and print their profiles."""
    from ..executor.benchmark import CostModel, SelfBenchmark
    from ..executor.handlers import CapabilityHandler, EchoCapability, PythonRunCapability

    wanted_arg = getattr(args, "capabilities", None)
    wanted = tuple(s.strip() for s in wanted_arg.split(",")) if wanted_arg else DEFAULT_BENCH
    unknown = [w for w in wanted if w not in KNOWN_BENCH]
    if unknown:
        print(f"error: cannot benchmark {unknown}; known: {list(KNOWN_BENCH)}", file=sys.stderr)
        return 2
    try:
        levels = _levels(getattr(args, "concurrency", None))
        cost = CostModel(
            price_per_cpu_second_micros=getattr(args, "price_per_cpu_second", None) or 50,
            price_per_gpu_second_micros=getattr(args, "price_per_gpu_second", None) or 1_000,
            min_price_micros=getattr(args, "min_price", None) or 1,
            currency=getattr(args, "currency", None) or "USD",
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    slots = getattr(args, "max_concurrency", None) or 2
    problems: list[str] = []

    async def run() -> dict[str, Any]:
        from contextlib import AsyncExitStack

        bench = SelfBenchmark(cost=cost, slots=slots)
        handlers: list[CapabilityHandler] = []
        async with AsyncExitStack() as stack:
            for name in wanted:
                if name == "echo":
                    handlers.append(EchoCapability())
                elif name == "python.run":
                    from ..executor.sandbox import Sandbox, SandboxError

                    try:
                        sandbox = await stack.enter_async_context(
                            Sandbox(profiles=("python-core",), max_concurrency=slots)
                        )
                    except SandboxError as exc:
                        problems.append(f"python.run: the sandbox did not start: {exc}")
                        continue
                    handlers.append(PythonRunCapability(sandbox))
                elif name == "email.classify.spam-v1":
                    from ..executor.ml_capabilities import SpamClassifierCapability

                    handlers.append(SpamClassifierCapability())
                elif name == "tensor.matmul":
                    from ..executor.ml_capabilities import TensorMatmulCapability

                    if not TensorMatmulCapability.available():
                        problems.append("tensor.matmul: torch is not installed")
                        continue
                    handlers.append(TensorMatmulCapability())
            await bench.calibrate_all(
                handlers,
                runs=getattr(args, "runs", None) or 30,
                warmup=3 if getattr(args, "warmup", None) is None else args.warmup,
                concurrency=levels,
                time_budget_s=getattr(args, "time_budget", None) or 10.0,
            )
        for name, prof in bench.profiles.items():
            if not prof.samples:
                problems.append(f"{name}: no job succeeded ({prof.failed} failed)")
        return bench.to_wire()

    profiles = run_loop(run)
    if args.json:
        print(json.dumps({"problems": problems, "profiles": profiles}, sort_keys=True))
    else:
        print(_table(profiles))
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0
