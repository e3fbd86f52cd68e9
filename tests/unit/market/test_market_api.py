from __future__ import annotations

import ast
import pathlib

import crankmesh.market as market

MARKET_DIR = pathlib.Path(market.__file__).parent
ALLOWED_IMPORTS = {
    "__future__",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "math",
    "types",
    "typing",
}


def test_all_is_sorted_and_complete() -> None:
    assert market.__all__ == sorted(market.__all__)
    for name in market.__all__:
        assert hasattr(market, name), name
    public = {n for n in vars(market) if not n.startswith("_")} - {"annotations"}
    assert public == set(market.__all__)


def test_market_is_pure() -> None:
    """No NATS, anyio, OS, clocks or randomness: only the stdlib basics and our errors."""
    for path in sorted(MARKET_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside crankmesh
                    assert node.module is None or not node.module.startswith(
                        ("executor", "originator", "receipts")
                    ), path
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name in ALLOWED_IMPORTS, f"{path.name} imports {name}"
