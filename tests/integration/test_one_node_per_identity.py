"""One running node per identity: a second node on the same state directory is refused;
one elsewhere with a copy of the key is detected from its adverts."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest

from crankmesh.keystore import lock_state_dir
from crankmesh.node import Node
from crankmesh.protocol.errors import KeystoreError
from crankmesh.protocol.identity import Identity

from .helpers import node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_a_second_node_on_the_same_state_dir_is_refused_until_the_first_stops(
    nats_server, tmp_path
):
    cfg = node_config(0, state_dir=str(tmp_path))
    async with Node(nats=nats_server.url, config=cfg):
        with pytest.raises(
            KeystoreError, match=rf"in use by another running node \(pid {os.getpid()}\)"
        ):
            async with Node(nats=nats_server.url, config=node_config(1, state_dir=str(tmp_path))):
                pass
    # Released when the first node stops: the directory can be used again.
    async with Node(nats=nats_server.url, config=node_config(1, state_dir=str(tmp_path))):
        pass


def test_the_claim_holds_across_processes_and_ends_with_its_holder(tmp_path):
    code = (
        "import sys; from crankmesh.keystore import lock_state_dir; "
        f"lock_state_dir({str(tmp_path)!r}); print('held', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(KeystoreError, match=rf"\(pid {holder.pid}\)"):
            lock_state_dir(tmp_path)
        holder.stdin.close()
        holder.wait(timeout=10)
    os.close(lock_state_dir(tmp_path))  # the holder exited: free again


async def test_a_node_elsewhere_with_a_copy_of_the_key_is_detected(nats_server, caplog):
    twin = Identity.generate()
    fast = {"advert_interval_s": 0.2, "advert_ttl_s": 2.0}
    async with (
        Node(nats=nats_server.url, identity=twin, config=node_config(0, **fast)) as a,
        Node(nats=nats_server.url, identity=twin, config=node_config(1, **fast)) as b,
    ):
        await anyio.sleep(0.8)
    for node in (a, b):
        assert node.metrics.rejection_count("advert", "own_key_elsewhere") >= 1
    assert "another node is advertising with this node's key" in caplog.text
    # ...while a node's own adverts are never mistaken for an impostor's.
    async with Node(nats=nats_server.url, config=node_config(2, **fast)) as alone:
        await anyio.sleep(0.5)
    assert alone.metrics.rejection_count("advert", "own_key_elsewhere") == 0
