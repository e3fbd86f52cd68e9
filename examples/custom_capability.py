"""A custom capability: an in-process service that nodes sell on the mesh.

``text.upper`` is an ordinary async function from bytes to bytes, registered on two
nodes with ``services={"text.upper": fn}``. A client asks for it by name with
``Job.call("text.upper", b"hi")``; the cheaper node wins, runs the function, and
returns the output with a signed, verified receipt.

Run it with ``python examples/custom_capability.py`` (exits 0 on success).
"""

from __future__ import annotations

import sys

import anyio

from crankmesh import Client, Job, Node, NodeConfig
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.testing import NatsServer

CAPABILITY = "text.upper"  # dot-separated lower-case tokens: it becomes a NATS subject


async def upper(payload: bytes) -> bytes:
    """The service: runs inside the node's process (operator-written, trusted code)."""
    return payload.decode("utf-8").upper().encode("utf-8")


def config(name: str, price: int) -> NodeConfig:
    return NodeConfig(
        name=name,
        capabilities=(CAPABILITY,),
        executor=ExecutorConfig(prices={CAPABILITY: price}),
    )


async def main() -> int:
    services = {CAPABILITY: upper}
    async with (
        NatsServer() as server,
        Node(nats=server.url, config=config("a", 300), services=services) as a,
        Node(nats=server.url, config=config("b", 200), services=services) as b,
        Client(nats=server.url) as client,
    ):
        names = {a.did: "a", b.did: "b"}
        await client.wait_for_peers(CAPABILITY, 2, wait_s=10)
        result = await client.run(Job.call(CAPABILITY, b"hi", timeout_sec=5))
        result.raise_for_status()  # JobFailed if the service raised
        print(
            f"{CAPABILITY}(b'hi') = {result.output!r} on node {names[result.executor]} "
            f"for {result.price} µ{result.currency}; receipt verified: {result.verified}"
        )
        return 0 if result.output == b"HI" and result.verified else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
