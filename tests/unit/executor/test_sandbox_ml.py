"""The python-ml env profile: torch + numpy pre-imported in the fork-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from crankmesh._loop import backend_options
from crankmesh.executor.sandbox import ExecStatus, Sandbox, SandboxLimits

pytestmark = pytest.mark.ml

torch = pytest.importorskip("torch")
pytest.importorskip("numpy")


@pytest.fixture(scope="module")
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", backend_options())


@pytest.fixture(scope="module")
async def ml_sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(profiles=("python-core", "python-ml"), max_concurrency=2) as sb:
        yield sb


@pytest.mark.anyio
async def test_python_ml_profile_is_available(ml_sandbox: Sandbox) -> None:
    assert ml_sandbox.profiles == ("python-core", "python-ml")
    assert ml_sandbox.accelerators == (("cuda",) if torch.cuda.is_available() else ())


@pytest.mark.anyio
async def test_torch_job_on_cpu(ml_sandbox: Sandbox) -> None:
    code = (
        "import sys, torch, numpy as np\n"
        "assert 'torch' in sys.modules\n"
        "t = torch.tensor(np.arange(4, dtype=np.float32), device=device)\n"
        "result = {'sum': float(t.sum()), 'device': device}\n"
        "print(device, torch.get_num_threads())\n"
    )
    result = await ml_sandbox.run(code=code, profile="python-ml", accelerator="cpu")
    assert result.status is ExecStatus.OK, result
    assert msgpack.unpackb(result.return_value or b"") == {"sum": 6.0, "device": "cpu"}
    assert result.stdout.startswith(b"cpu ")


@pytest.mark.anyio
async def test_cuda_request_without_a_gpu_is_an_error(ml_sandbox: Sandbox) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    result = await ml_sandbox.run(code="print(device)", profile="python-ml", accelerator="cuda")
    assert result.status is ExecStatus.ERROR, result
    assert result.detail == "no CUDA device"
    mps = await ml_sandbox.run(code="print(device)", profile="python-ml", accelerator="mps")
    assert mps.status is ExecStatus.ERROR and mps.detail == "no MPS device"


@pytest.mark.gpu
@pytest.mark.anyio
async def test_cuda_job_runs_on_the_gpu(ml_sandbox: Sandbox) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    code = "import torch\nresult = float(torch.ones(8, device=device).sum())\nprint(device)"
    result = await ml_sandbox.run(code=code, profile="python-ml", accelerator="cuda")
    assert result.status is ExecStatus.OK, result
    assert result.stdout == b"cuda\n" and msgpack.unpackb(result.return_value or b"") == 8.0


@pytest.mark.anyio
async def test_numpy_allocation_beyond_the_memory_limit(ml_sandbox: Sandbox) -> None:
    code = "import numpy as np\nx = np.ones(8 << 30, dtype=np.uint8)"
    result = await ml_sandbox.run(
        code=code, profile="python-ml", limits=SandboxLimits(memory_mb=256)
    )
    assert result.status is ExecStatus.MEMORY_LIMIT, result


@pytest.mark.anyio
async def test_torch_allocation_beyond_the_memory_limit(ml_sandbox: Sandbox) -> None:
    code = "import torch\nx = torch.ones(8 << 30, dtype=torch.uint8)"
    result = await ml_sandbox.run(
        code=code, profile="python-ml", limits=SandboxLimits(memory_mb=256)
    )
    assert result.status is ExecStatus.MEMORY_LIMIT, result


@pytest.mark.anyio
async def test_core_profile_still_works_beside_ml(ml_sandbox: Sandbox) -> None:
    result = await ml_sandbox.run(code="import sys\nprint('torch' in sys.modules)")
    assert result.status is ExecStatus.OK and result.stdout == b"False\n"
