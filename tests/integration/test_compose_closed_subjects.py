"""compose.yaml's mesh-init really produces what the servers and nodes are configured to
read: its script (run here with the volumes as temporary directories) writes one key and
nkey seed per node and an authorization file that a real nats-server loads, which lets
each node in as its own DID and keeps it out of the others' audit subjects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import nats
import pytest

from crankmesh.config import load_settings, validate_for_mode
from crankmesh.keystore import load_identity
from crankmesh.nats_auth import user_nkey
from crankmesh.protocol import subjects
from crankmesh.testing import NatsServer

yaml = pytest.importorskip("yaml")

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
NODES = ("node-1", "node-2", "node-gpu")


def _run_mesh_init(tmp_path: Path) -> tuple[Path, Path]:
    init = SERVICES["mesh-init"]
    assert init["entrypoint"][0] == "sh"
    script = init["command"][0].replace("$$", "$")
    state, auth = tmp_path / "state", tmp_path / "auth"
    for n in NODES:
        (state / n).mkdir(parents=True)
    auth.mkdir()
    script = script.replace("/state/", f"{state}/").replace("/auth/", f"{auth}/")
    if os.geteuid() != 0:
        script = script.replace("chown -R 10001:10001", "true")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # What the image has on PATH: `python` and the `crankmesh` entry point.
    for name, argv in (("python", ""), ("crankmesh", " -m crankmesh.cli")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {sys.executable}{argv} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for _ in range(2):  # idempotent: a restart keeps the identities
        r = subprocess.run(
            [*init["entrypoint"], script], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
    return state, auth


@pytest.fixture(scope="module")
def mesh_init(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _run_mesh_init(tmp_path_factory.mktemp("mesh-init"))


def test_mesh_init_writes_keys_seeds_members_and_an_authorization_file(
    mesh_init: tuple[Path, Path],
) -> None:
    state, auth = mesh_init
    members = (auth / "members.txt").read_text().split()
    dids = [load_identity(state / n / "node.key").did for n in NODES]
    assert members == dids
    conf = (auth / "authorization.conf").read_text()
    for did in dids:
        assert user_nkey(did) in conf
        assert f'"crank.demo.receipts.{did.removeprefix("did:key:")}"' in conf
    assert "max_payload: 8MB" in COMPOSE["configs"]["nats-limits"]["content"]
    assert 'include "auth/authorization.conf"' in COMPOSE["configs"]["nats-limits"]["content"]
    # The servers mount it where the include looks; the nodes read seed and trust file.
    for name in ("nats-1", "nats-2", "nats-3"):
        assert "mesh-auth:/etc/nats/auth:ro" in SERVICES[name]["volumes"], name
    for n in NODES:
        env = {str(k): str(v) for k, v in SERVICES[n]["environment"].items()}
        env = {
            k: v.replace("/var/lib/crankmesh", str(state / n)).replace(
                "/etc/crankmesh/auth", str(auth)
            )
            for k, v in env.items()
        }
        env["CRANKMESH_HOME"] = str(state / n)
        s = load_settings(env=env)
        assert s.mode == "production" and validate_for_mode(s) == [], (n, validate_for_mode(s))


@pytest.mark.anyio
async def test_a_nats_server_loads_the_generated_file_and_closes_the_subjects(
    mesh_init: tuple[Path, Path],
):
    if (
        shutil.which("nats-server") is None
        and not (Path(sys.executable).parent / "nats-server").exists()
    ):
        pytest.skip("no nats-server binary")
    state, auth = mesh_init
    block = (auth / "authorization.conf").read_text()
    body = re.search(r"authorization \{\n(.*)\n\}", block, re.S)
    assert body is not None
    one, two = (state / n / "nats.nk" for n in NODES[:2])
    two_did = load_identity(state / NODES[1] / "node.key").did
    with NatsServer(authorization=body.group(1), extra_config="max_payload: 8MB") as server:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            server.url, nkeys_seed=str(one), error_cb=on_error, allow_reconnect=False
        )
        try:
            await nc.publish(subjects.receipts("demo", two_did), b"forged")
            await nc.flush()
            with anyio.fail_after(5):
                while not errors:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        finally:
            await nc.close()
        assert "permissions violation" in errors[0].lower(), errors
        nc2 = await nats.connect(server.url, nkeys_seed=str(two), allow_reconnect=False)
        await nc2.close()
