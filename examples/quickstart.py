"""Quick start: an embedded nats-server, two nodes with different prices, and two jobs.

Run it with ``python examples/quickstart.py``. Everything happens in this one process
(plus the nats-server subprocess and the sandbox's fork-servers); it prints which node
won each job, the price, and whether the signed receipt verified, and exits 0 when every
job ended with a verified receipt.
"""

from __future__ import annotations

import sys

import anyio

from crankmesh import Client, Job, Node, NodeConfig
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.testing import NatsServer


def node_config(name: str, price: int) -> NodeConfig:
    """A node offering ``echo`` and sandboxed ``python.run`` at ``price`` micro-USD per job."""
    return NodeConfig(
        name=name,
        capabilities=("echo", "python.run"),
        executor=ExecutorConfig(default_price=price, max_concurrency=1),
    )


async def main() -> int:
    async with NatsServer() as server:  # a real nats-server on a free port
        print(f"embedded nats-server at {server.url}")
        async with (
            Node(nats=server.url, config=node_config("cheap", 1_000)) as cheap,
            Node(nats=server.url, config=node_config("pricey", 5_000)) as pricey,
            Client(nats=server.url) as client,  # an originator with its own identity
        ):
            names = {cheap.did: "cheap", pricey.did: "pricey"}
            await client.wait_for_peers("python.run", 2, wait_s=10)
            jobs = [
                Job.echo(b"hello, mesh"),
                Job.python("print(sum(args['xs']))", {"xs": [1, 2, 3, 4]}, timeout_sec=10),
            ]
            ok = True
            for job in jobs:
                result = await client.run(job)  # announce, bid, select, assign, verify
                shown = result.stdout.strip() if job.capability == "python.run" else result.output
                print(
                    f"{job.capability:10} won by {names[result.executor]} for {result.price} "
                    f"µ{result.currency} in {result.latency_ms:.1f} ms -> {shown!r} "
                    f"(receipt {result.receipt_cid[:16]}…, verified={result.verified})"
                )
                ok = ok and result.ok and result.verified
            return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
