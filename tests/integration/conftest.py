"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from crankmesh.protocol.envelope import open_envelope

from . import helpers


@pytest.fixture(params=helpers.PATHS)
async def both_paths(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, nats_server: Any
) -> AsyncIterator[str]:
    """Run the test once on each negotiation path: clients from ``helpers.client_for``
    assign on live firm quotes (``quote``) or always call for bids (``call_for_bids``).

    A spy on the assignment subjects checks the path was really taken: on ``quote`` at
    least one Assignment (when there was any) named a quote, on ``call_for_bids`` none did.
    """
    path = str(request.param)
    monkeypatch.setattr(helpers, "default_path", path)
    on_quote: list[str] = []
    on_bid: list[str] = []
    async with helpers.raw_connection(nats_server.url) as spy:

        async def grab(msg: Any) -> None:
            try:
                body = open_envelope(msg.data).body
            except Exception:
                return
            (on_quote if body.get("quote") else on_bid).append(msg.subject)

        await spy.subscribe("crank.*.jobs.*.assignment.*", cb=grab)
        await spy.flush()
        yield path
        await spy.flush()
    if path == "quote" and on_bid and not on_quote:
        pytest.fail(f"no assignment on a quote on the quote path ({len(on_bid)} on bids)")
    if path == "call_for_bids":
        assert not on_quote, "an assignment on a quote on the call-for-bids path"
