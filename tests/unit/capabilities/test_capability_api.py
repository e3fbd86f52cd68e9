"""The public surface of crankmesh.capabilities, and the purity rule of the house."""

from __future__ import annotations

import ast
from pathlib import Path

import crankmesh.capabilities as capabilities
from crankmesh.capabilities import STANDARD_TYPES, CapabilitySpecError
from crankmesh.protocol.errors import CrankmeshError

PACKAGE = Path(capabilities.__file__).parent
FORBIDDEN = {"nats", "anyio", "asyncio", "os", "platform", "socket", "subprocess", "logging"}


def test_all_is_sorted_and_complete() -> None:
    assert capabilities.__all__ == sorted(capabilities.__all__)
    for name in capabilities.__all__:
        assert getattr(capabilities, name) is not None
    public = {n for n in vars(capabilities) if not n.startswith("_")}
    modules = {"annotations"} | {p.stem for p in PACKAGE.glob("*.py")}
    assert public - modules == set(capabilities.__all__)


def test_modules_are_private() -> None:
    assert all(p.name.startswith("_") for p in PACKAGE.glob("*.py"))


def test_the_package_does_no_io() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{path.name} imports {roots & FORBIDDEN}"


def test_errors_belong_to_the_one_tree() -> None:
    assert issubclass(CapabilitySpecError, CrankmeshError)
    assert issubclass(CapabilitySpecError, ValueError)


def test_standard_capability_types() -> None:
    # Seed 003: "SHALL include: gpu, cpu, memory, storage, network, codecs, frameworks".
    assert {"gpu", "cpu", "memory", "storage", "network", "codecs", "frameworks"} <= set(
        STANDARD_TYPES
    )
