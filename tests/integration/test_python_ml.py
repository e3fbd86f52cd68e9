"""The python-ml profile (numpy + torch) through the mesh; GPU variants skip without one."""

from __future__ import annotations

import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.ml]

MATMUL = """
import torch
a = torch.arange(args['n'] * args['n'], dtype=torch.float32, device=device).reshape(args['n'], -1)
b = torch.eye(args['n'], device=device) * 2
c = a @ b
result = {'device': str(c.device), 'trace': float(torch.trace(c)), 'sum': float(c.sum())}
"""


def _ml_node():
    return node_config(
        0, capabilities=("python.run",), sandbox_profiles=("python-core", "python-ml")
    )


async def test_python_ml_matrix_multiply_on_cpu(nats_server):
    async with mesh(nats_server.url, [_ml_node()]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(
                Job.python(
                    MATMUL, {"n": 64}, env_profile="python-ml", accelerator="cpu", timeout_sec=60
                )
            )
            assert r.ok, (r.status, r.stderr)
            n = 64
            total = sum(range(n * n)) * 2
            trace = sum(2 * (i * n + i) for i in range(n))
            assert r.return_value == {"device": "cpu", "trace": float(trace), "sum": float(total)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
async def test_python_ml_matrix_multiply_on_cuda(nats_server):  # pragma: no cover - GPU
    async with mesh(nats_server.url, [_ml_node()]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(
                Job.python(
                    MATMUL, {"n": 256}, env_profile="python-ml", accelerator="cuda", timeout_sec=120
                )
            )
            assert r.ok and r.return_value["device"].startswith("cuda")
