from __future__ import annotations

from typing import Any

import pytest

from crankmesh._loop import backend_options


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    # nats-py is asyncio-only: anyio on the asyncio backend, on the loop crankmesh's
    # entry points use (uvloop when installed; CRANKMESH_EVENT_LOOP=asyncio for the other).
    return ("asyncio", backend_options())


from crankmesh.testing import nats_cluster, nats_server  # noqa: E402, F401
