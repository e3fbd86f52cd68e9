from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # nats-py is asyncio-only, so crankmesh runs anyio on the asyncio backend.
    return "asyncio"
