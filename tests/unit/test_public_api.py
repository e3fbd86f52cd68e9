"""The package's public surface: a sorted ``__all__`` of names that exist."""

from __future__ import annotations

import crankmesh
import crankmesh.originator


def test_all_is_sorted_and_every_name_exists() -> None:
    for module in (crankmesh, crankmesh.originator):
        assert list(module.__all__) == sorted(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_pipelines_are_exported() -> None:
    assert {"Pipeline", "PipelineBudgetExceeded", "PipelineRun", "StepFailed"} <= set(
        crankmesh.__all__
    )
    assert issubclass(crankmesh.PipelineBudgetExceeded, crankmesh.BudgetExceeded)
