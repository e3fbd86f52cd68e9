"""TaskSet: cheap background tasks that still end under anyio's rules."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from crankmesh._loop import backend_options
from crankmesh._tasks import TaskSet

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", backend_options())


async def test_spawned_tasks_run_and_are_forgotten_when_done() -> None:
    tasks, seen = TaskSet(), []

    async def work(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(x)

    for i in range(5):
        tasks.spawn(work, i)
    assert len(tasks) == 5
    await tasks.aclose(grace_s=1)
    assert sorted(seen) == [0, 1, 2, 3, 4] and len(tasks) == 0


async def test_aclose_cancels_but_a_shielded_section_completes() -> None:
    tasks, events = TaskSet(), []
    started = anyio.Event()

    async def job() -> None:
        try:
            started.set()
            await anyio.sleep(60)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                events.append("receipt published")

    tasks.spawn(job)
    await started.wait()
    with anyio.fail_after(5):
        await tasks.aclose()
    assert events == ["receipt published"]
    with pytest.raises(RuntimeError):
        tasks.spawn(job)


async def test_a_task_spawned_just_before_close_is_cancelled_not_awaited_forever() -> None:
    tasks = TaskSet()
    tasks.spawn(anyio.sleep, 60)  # has not run yet
    with anyio.fail_after(5):
        await tasks.aclose()


async def test_grace_lets_short_tasks_finish(caplog: pytest.LogCaptureFixture) -> None:
    tasks, done = TaskSet(), []

    async def short() -> None:
        await anyio.sleep(0.01)
        done.append(1)

    async def boom() -> None:
        raise ValueError("no")

    tasks.spawn(short)
    tasks.spawn(boom)
    with caplog.at_level(logging.ERROR, logger="crankmesh.tasks"):
        await tasks.aclose(grace_s=2)
    assert done == [1]
    assert "failed" in caplog.text and "ValueError" in caplog.text
