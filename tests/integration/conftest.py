"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from . import helpers


@pytest.fixture(params=helpers.PATHS)
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on each negotiation path: clients from ``helpers.client_for``
    assign on live firm quotes (``quote``) or always call for bids (``call_for_bids``)."""
    monkeypatch.setattr(helpers, "default_path", request.param)
    return str(request.param)
