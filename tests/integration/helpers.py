"""Shared helpers for integration tests: real nats-server, real nodes, no mocks."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import nats

from crankmesh.executor.agent import ExecutorConfig
from crankmesh.node import Node, NodeConfig
from crankmesh.originator import Client


def node_config(
    i: int = 0,
    *,
    capabilities: Sequence[str] = ("echo",),
    price: int | None = None,
    **executor: Any,
) -> NodeConfig:
    node_fields = {f.name for f in dataclasses.fields(NodeConfig)}
    extra = {k: executor.pop(k) for k in list(executor) if k in node_fields}
    # Fast nodes for tests: no start-up self-benchmark, no torch import for GPU
    # detection (tests of those features turn them back on).
    extra.setdefault("calibration_runs", 0)
    extra.setdefault("detect_gpu", False)
    extra.setdefault("probe_interval_s", 0)
    extra.setdefault("name", f"node-{i}")
    return NodeConfig(
        capabilities=tuple(capabilities),
        executor=ExecutorConfig(
            default_price=price if price is not None else 1000 * (i + 1), **executor
        ),
        **extra,
    )


@asynccontextmanager
async def mesh(
    url: str, configs: Sequence[NodeConfig], **services: Any
) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(Node(nats=url, config=cfg, services=services or None))
            for cfg in configs
        ]
        yield nodes


#: How a client made by :func:`client_for` negotiates unless told: ``"call_for_bids"``
#: (no quotes: the tests written for the bid flow) or ``"quote"`` (the product's default:
#: assign on a live firm quote when one fits).  The ``both_paths`` fixture
#: (tests/integration/conftest.py) runs a test once per path.
PATHS = ("quote", "call_for_bids")
default_path = "call_for_bids"


@asynccontextmanager
async def client_for(url: str, capability: str, peers: int, **kwargs: Any) -> AsyncIterator[Client]:
    if default_path == "call_for_bids":
        kwargs.setdefault("use_quotes", False)
    async with Client(nats=url, **kwargs) as c:
        assert await c.wait_for_peers(capability, peers, wait_s=10) >= peers
        if default_path == "quote" and c.config.use_quotes:
            # the quote path is taken only on live quotes: have them all first
            with anyio.move_on_after(10):
                while len(c.directory.quotes(capability)) < peers:
                    await c.directory.wait_changed()
        yield c


@asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(url, allow_reconnect=False, name="test-raw")
    try:
        yield nc
    finally:
        await nc.close()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
