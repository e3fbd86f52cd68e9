"""The CLI misuse matrix: each ordinary mistake ends in its documented exit code and one
``error:`` line, never a traceback (``crankmesh.cli._errors`` holds the table)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crankmesh.cli._errors import EXIT_CODES, EXIT_CONNECTION, EXIT_USAGE
from crankmesh.testing import NatsServer

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "crankmesh.cli"]
ENV = {**os.environ, "CRANKMESH_ENV": "development"}
ENV.pop("CRANKMESH_NATS", None)
DOWN = "nats://127.0.0.1:1"  # nothing listens on port 1


def run_cli(
    *args: str | bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        env=env or ENV,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


SUBMIT_USAGE_CASES = [
    (["--file", "/nope.py"], "/nope.py"),
    (["--code", "1", "--args", "{bad"], "--args"),
    (["--code", "1", "--args", "[1,2]"], "JSON object"),
    (["--code", "1", "--policy", "bogus"], "--policy"),
    (["--code", "1", "--accelerator", "tpu9"], "--accelerator"),
    (["--code", "1", "--capability", "Bad Cap!"], "capability"),
    (["--code", "1", "--count", "0"], "--count"),
    (["--code", "1", "--concurrency", "0"], "--concurrency"),
    (["--code", "1", "--timeout", "-1"], "--timeout"),
    (["--code", "1", "--slo-p95-ms", "-5"], "--slo-p95-ms"),
    (["--code", "1", "--slo-p95-ms", "5", "--policy", "cost"], "--policy slo"),
    (["--code", "1", "--key", "/nope.key"], "/nope.key"),
    (["--code", "1", "--budget", "/nope.tok", "--key", "/nope.key"], "/nope"),
    (["--code", "1", "--connect-timeout", "0"], "--connect-timeout"),
    (["--code", "1", "--federation", "bad fed!"], "federation"),
]


@pytest.mark.parametrize(("extra", "word"), SUBMIT_USAGE_CASES)
def test_submit_usage_errors_exit_2_before_connecting(extra: list[str], word: str) -> None:
    # DOWN: if anything connected first, the error would be a connection error (exit 3).
    r = run_cli("submit", "--nats", DOWN, *extra)
    assert_one_line_error(r, EXIT_USAGE, word)


def test_non_utf8_code_is_a_usage_error() -> None:
    r = subprocess.run(
        [*CLI, "submit", "--nats", DOWN, "--code", os.fsdecode(b"print(\xff\xfe)")],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        env=ENV,
    )
    assert_one_line_error(r, EXIT_USAGE, "UTF-8")


def test_an_http_url_is_a_usage_error() -> None:
    r = run_cli("submit", "--nats", "http://127.0.0.1:4222", "--code", "1")
    assert_one_line_error(r, EXIT_USAGE, "http://", "nats://")


def test_missing_nats_url_names_the_flag_and_the_variable() -> None:
    # (submit needs none: it then runs on a local mesh, see test_zero_config.py)
    r = run_cli("peers")
    assert_one_line_error(r, EXIT_USAGE, "--nats", "CRANKMESH_NATS")


@pytest.mark.parametrize(
    "command",
    [
        ["submit", "--code", "1"],
        ["peers"],
        ["top", "--iterations", "1"],
        ["explain", "bafkreibnoelefnzgwbcacyt4vh52ymxvzbjq7mmqhtcnwarfq4lzegsiqe"],
        ["audit"],
    ],
)
def test_nats_down_is_exit_3_fast_with_connect_timeout(command: list[str], tmp_path: Path) -> None:
    env = {**ENV, "CRANKMESH_NATS": DOWN, "CRANKMESH_HOME": str(tmp_path)}
    r = subprocess.run(
        [*CLI, *command, "--connect-timeout", "0.3"],
        capture_output=True,
        text=True,
        timeout=20,  # a hang guard, not a timing assertion
        env=env,
    )
    assert_one_line_error(r, EXIT_CONNECTION, DOWN)


def test_environment_gives_the_url_and_the_federation(tmp_path: Path) -> None:
    # CRANKMESH_FEDERATION is validated like --federation (before connecting) ...
    env = {**ENV, "CRANKMESH_NATS": DOWN, "CRANKMESH_FEDERATION": "no spaces allowed"}
    r = run_cli("peers", env=env)
    assert_one_line_error(r, EXIT_USAGE, "federation")
    # ... and CRANKMESH_NATS is the URL tried
    r = run_cli("peers", "--connect-timeout", "0.3", env={**ENV, "CRANKMESH_NATS": DOWN})
    assert_one_line_error(r, EXIT_CONNECTION, "127.0.0.1:1")


def test_an_authorization_violation_is_exit_3() -> None:
    with NatsServer(token="s3cret-token") as server:
        r = run_cli("submit", "--nats", server.url, "--code", "1", "--connect-timeout", "1")
        assert_one_line_error(r, EXIT_CONNECTION)
        assert "s3cret-token" not in r.stderr


def test_receipts_export_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    out.write_text("keep me\n")
    r = run_cli("receipts", "export", "--nats", DOWN, "--out", str(out))
    assert_one_line_error(r, EXIT_USAGE, "--force")
    assert out.read_text() == "keep me\n"
    # with --force it goes on (and here meets the missing server: exit 3)
    r = run_cli(
        "receipts", "export", "--nats", DOWN, "--out", str(out), "--force",
        "--connect-timeout", "0.3",
    )  # fmt: skip
    assert_one_line_error(r, EXIT_CONNECTION)


def test_debug_shows_the_traceback() -> None:
    r = run_cli("--debug", "submit", "--nats", DOWN, "--connect-timeout", "0.3", "--code", "1")
    assert r.returncode == EXIT_CONNECTION
    assert "Traceback" in r.stderr and "error: " in r.stderr


def test_help_shows_the_exit_code_table() -> None:
    for command in ([], ["submit"]):
        r = run_cli(*command, "--help")
        assert r.returncode == 0
        for code, text in EXIT_CODES.items():
            assert f"  {code:<4} {text}" in r.stdout, (code, r.stdout)
