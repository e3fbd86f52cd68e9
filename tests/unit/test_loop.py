"""Which event loop crankmesh's entry points use (crankmesh/_loop.py)."""

from __future__ import annotations

import importlib.util

import pytest

from crankmesh import _loop
from crankmesh.cli import main


def test_auto_uses_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_loop.ENV_VAR, raising=False)
    installed = importlib.util.find_spec("uvloop") is not None
    assert _loop.backend_options() == ({"use_uvloop": True} if installed else {})
    assert _loop.event_loop_name() == ("uvloop" if installed else "asyncio")


def test_asyncio_forces_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_loop.ENV_VAR, " AsyncIO ")
    assert _loop.backend_options() == {}

    async def which() -> str:
        import asyncio

        return type(asyncio.get_running_loop()).__module__

    assert _loop.run(which).startswith("asyncio")


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_run_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_loop.ENV_VAR, "uvloop")

    async def which(x: int) -> tuple[str, int]:
        import asyncio

        return type(asyncio.get_running_loop()).__module__, x

    module, x = _loop.run(which, 7)
    assert module.startswith("uvloop") and x == 7


def test_required_uvloop_that_is_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_loop.ENV_VAR, "uvloop")
    monkeypatch.setattr(_loop.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        _loop.backend_options()
    monkeypatch.setenv(_loop.ENV_VAR, "auto")
    assert _loop.backend_options() == {}  # auto falls back to the standard loop


def test_an_unknown_choice_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(_loop.ENV_VAR, "trio")
    with pytest.raises(ValueError, match="must be one of auto, uvloop, asyncio"):
        _loop.backend_options()
    assert main(["identity", "show", "--key", "/nonexistent"]) == 2
    assert "CRANKMESH_EVENT_LOOP must be one of" in capsys.readouterr().err
