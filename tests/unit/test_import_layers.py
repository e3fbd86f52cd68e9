"""The dependencies named in issue 15 run one way (no import cycles, not even lazy ones)."""

from __future__ import annotations

import ast
import pathlib

import crankmesh

ROOT = pathlib.Path(crankmesh.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, anywhere in it (TYPE_CHECKING blocks and functions too),
    as the last dotted component of a relative import or the full absolute name."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            out.add((node.module or "").rsplit(".", 1)[-1])
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_node_does_not_import_config() -> None:
    assert "config" not in _imports(ROOT / "node.py")
    assert "node" not in _imports(ROOT / "_config_checks.py")


def test_explain_does_not_import_ranking() -> None:
    assert "_ranking" not in _imports(ROOT / "market" / "_explain.py")
    assert "_ranking" not in _imports(ROOT / "market" / "_scored.py")


def test_config_error_is_the_same_class_everywhere() -> None:
    from crankmesh import config, node

    assert config.ConfigError is node.ConfigError
