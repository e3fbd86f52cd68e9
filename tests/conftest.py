from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # nats-py is asyncio-only, so crankmesh runs anyio on the asyncio backend.
    return "asyncio"


from crankmesh.testing import nats_cluster, nats_server  # noqa: E402, F401
