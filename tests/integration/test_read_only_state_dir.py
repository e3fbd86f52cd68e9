"""A node whose state directory cannot be written stops with one `error:` line and exit 2,
never a traceback (also through the SDK: a typed StateDirError)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from crankmesh.node import Node
from crankmesh.protocol.errors import StateDirError
from crankmesh.state_dir import check_state_dir

from .test_cli import DEV_ENV, run_cli

pytestmark = [pytest.mark.integration]

NOBODY = 65534
_REPO = Path(__file__).resolve().parents[2]


def _assert_one_error_line(r: subprocess.CompletedProcess[str], state: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: state directory ") and str(state) in lines[0]
    assert "not writable" in lines[0] and "Traceback" not in r.stderr


def test_state_dir_below_a_file_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    state = blocker / "state"
    r = run_cli("node", "--state-dir", str(state), "--nats", "nats://127.0.0.1:1", timeout=60)
    _assert_one_error_line(r, state)


def _nobody_python() -> tuple[str, dict[str, str]]:
    """An interpreter the unprivileged uid can run, with this checkout and the venv's
    packages on its path (the venv itself may live under a directory only root enters)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = [str(_REPO), *site.getsitepackages()]
    env = {**DEV_ENV, "PYTHONPATH": os.pathsep.join(paths), "HOME": "/tmp"}
    why = [f"no {version} found"]
    for folder in ("/usr/bin", "/usr/local/bin", f"{sys.base_prefix}/bin"):
        exe = shutil.which(version, path=folder)
        if exe is None:
            continue
        try:
            probe = subprocess.run(
                [exe, "-c", "import crankmesh.cli"],
                user=NOBODY,
                env=env,
                capture_output=True,
                timeout=60,
                cwd="/",
            )
        except PermissionError:
            why.append(f"uid {NOBODY} cannot run {exe}")
            continue
        if probe.returncode == 0:
            return exe, env
        why.append(f"uid {NOBODY} cannot import this checkout with {exe}")
    pytest.skip("no interpreter for an unprivileged uid: " + "; ".join(why))


def test_read_only_state_dir_is_one_error_line_and_exit_2() -> None:
    # Not under pytest's tmp_path: its root is mode 0700, which the unprivileged uid
    # could not even enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="crankmesh-ro-state-", dir="/tmp"))
    state = tmp_path / "state"
    state.mkdir()
    cmd = ["-m", "crankmesh.cli", "node", "--state-dir", str(state), "--nats", "nats://127.0.0.1:1"]
    if os.geteuid() == 0:
        # root writes anywhere: run the node as an unprivileged uid on a root-owned,
        # read-only (0555) directory it can enter but not write.
        exe, env = _nobody_python()
        os.chmod(tmp_path, 0o755)
        os.chmod(state, 0o555)
        r = subprocess.run(
            [exe, *cmd], user=NOBODY, env=env, capture_output=True, text=True, timeout=60, cwd="/"
        )
    else:
        os.chmod(state, 0o555)
        r = run_cli(*cmd[2:], timeout=60)
    os.chmod(state, 0o755)
    shutil.rmtree(tmp_path)
    _assert_one_error_line(r, state)


def test_check_state_dir_creates_and_probes(tmp_path: Path) -> None:
    made = check_state_dir(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the probe is gone
    (tmp_path / "f").write_text("")
    with pytest.raises(StateDirError, match="not writable"):
        check_state_dir(tmp_path / "f" / "x")


@pytest.mark.anyio
async def test_node_with_an_unwritable_state_dir_raises_state_dir_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    from .helpers import node_config

    cfg = node_config(0, state_dir=str(tmp_path / "f" / "state"))
    with pytest.raises(StateDirError, match="not writable"):
        async with Node(nats="nats://127.0.0.1:1", config=cfg):
            pass
