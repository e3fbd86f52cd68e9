"""Closed audit subjects (issue 14, item 7): on a nats-server whose users are the members'
DIDs (nkeys) with crankmesh's per-role permissions, an attacker identity cannot publish into
another node's receipts / bids / settlements / tokens subjects, nor read its assignments,
while honest jobs complete and their records reach JetStream."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import anyio.to_thread
import nats
import nats.errors
import pytest

from crankmesh.keystore import save_identity
from crankmesh.node import Node
from crankmesh.originator import Client, Job
from crankmesh.protocol import subjects
from crankmesh.protocol.errors import TransportError
from crankmesh.protocol.identity import Identity, did_node_id
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name
from crankmesh.testing import closed_nats_server, member_options
from crankmesh.transport import NatsOptions, connect

from .helpers import node_config
from .test_cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FED = "default"
MARK = b"forged-by-the-attacker"


async def _connect(opts, errors: list[str]):
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        servers=list(opts.servers),
        nkeys_seed=opts.nkeys_seed,
        error_cb=on_error,
        allow_reconnect=False,
    )


async def test_attacker_cannot_publish_into_other_nodes_audit_subjects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    honest, attacker, origin, auditor = (Identity.generate() for _ in range(4))
    members = {
        "node": [honest.did, attacker.did],
        "originator": [origin.did],
        "auditor": [auditor.did],
    }
    with closed_nats_server(members, federation=FED) as server:
        url = server.url
        cfg = node_config(0, capabilities=("echo",))
        opts = member_options(url, honest, tmp_path)
        async with Node(identity=honest, nats=opts, config=cfg) as honest_node:
            # The permissions let a node put its own directory key (RFC 0001 §8.15), and
            # an originator watch the bucket: neither falls back to the adverts subject.
            assert honest_node.directory_bucket is not None
            async with Client(  # call for bids: one winning-bid record per job (counted below)
                nats=member_options(url, origin, tmp_path),
                identity=origin,
                federation=FED,
                use_quotes=False,
            ) as client:
                assert client.directory.source == "kv"
                assert await client.wait_for_peers("echo", 1, wait_s=10) >= 1
                errors: list[str] = []
                nc = await _connect(member_options(url, attacker, tmp_path), errors)
                try:
                    forged = [
                        subjects.receipts(FED, honest.did),
                        subjects.bid_records(FED, honest.did),
                        subjects.settlements(FED, origin.did),
                        subjects.tokens(FED, origin.did),
                        # ... and the honest node's directory key (RFC 0001 §8.15).
                        f"$KV.{subjects.directory_bucket(FED)}.{did_node_id(honest.did)}",
                    ]
                    for subject in forged:
                        await nc.publish(subject, MARK, headers={"Nats-Msg-Id": subject})
                    # Reading another node's assignments is refused too.
                    await nc.subscribe(subjects.assignments_for(FED, honest.did))
                    # Its own audit subject is open to it (the control: the connection works).
                    own = subjects.receipts(FED, attacker.did)
                    await nc.publish(own, MARK + b"-own", headers={"Nats-Msg-Id": "own"})
                    await nc.flush()
                    # Honest work carries on meanwhile.
                    for i in range(5):
                        r = await client.run(Job.echo(b"honest %d" % i))
                        assert r.ok and r.verified and r.output == b"honest %d" % i
                    with anyio.fail_after(5):
                        while len(errors) < len(forged) + 1:  # noqa: ASYNC110
                            await anyio.sleep(0.02)
                finally:
                    await nc.close()
            violations = " ".join(errors).lower()
            for subject in forged:
                assert f'publish to "{subject}"' in violations or subject.lower() in violations, (
                    subject,
                    errors,
                )
            assert "subscription" in violations and "assignment" in violations, errors
            # The honest node and client needed nothing their roles do not grant.
            honest_errors = [
                r.getMessage() for r in caplog.records if r.name == "crankmesh.transport"
            ]
            assert not any("violation" in m.lower() for m in honest_errors), honest_errors

        # What the record stream holds (read as the auditor): the honest node's
        # receipts and winning bids, the originator's settlements, and nothing forged
        # under another member's id.
        audit_errors: list[str] = []
        audit_nc = await _connect(member_options(url, auditor, tmp_path), audit_errors)
        try:
            with anyio.fail_after(10):
                while True:
                    records = await read_stream(audit_nc, stream_name(FED), idle_timeout_s=0.5)
                    by_subject: dict[str, list[bytes]] = {}
                    for rec in records:
                        by_subject.setdefault(rec.subject, []).append(rec.data)
                    if len(by_subject.get(subjects.receipts(FED, honest.did), [])) >= 5:
                        break
                    await anyio.sleep(0.1)
            # The auditor reads but writes nothing on the federation's subjects.
            await audit_nc.publish(subjects.receipts(FED, honest.did), MARK)
            await audit_nc.flush()
            with anyio.fail_after(5):
                while not audit_errors:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        finally:
            await audit_nc.close()
        assert "permissions violation" in audit_errors[0].lower(), audit_errors
        assert not any(MARK == d for data in by_subject.values() for d in data), by_subject.keys()
        assert len(by_subject[subjects.receipts(FED, honest.did)]) == 5
        assert len(by_subject[subjects.bid_records(FED, honest.did)]) == 5
        assert by_subject[subjects.receipts(FED, attacker.did)] == [MARK + b"-own"]


async def test_unknown_identities_and_anonymous_clients_cannot_connect(tmp_path: Path):
    member, stranger = Identity.generate(), Identity.generate()
    with closed_nats_server({"node": [member.did]}, federation=FED) as server:
        anonymous = NatsOptions(servers=(server.url,), initial_connect_timeout_s=2)
        with pytest.raises(TransportError, match="refused the connection"):
            await connect(anonymous)
        opts = dataclasses.replace(
            member_options(server.url, stranger, tmp_path), initial_connect_timeout_s=2
        )
        with pytest.raises(TransportError, match="refused the connection"):
            await connect(opts)
        ok = await connect(member_options(server.url, member, tmp_path))
        await ok.close()


async def test_an_originator_identity_cannot_bid_or_write_receipts(tmp_path: Path):
    origin = Identity.generate()
    with closed_nats_server({"originator": [origin.did]}, federation=FED) as server:
        errors: list[str] = []
        nc = await _connect(member_options(server.url, origin, tmp_path), errors)
        try:
            await nc.publish(subjects.bids(FED, "bafyjob"), b"x")
            await nc.publish(subjects.receipts(FED, origin.did), b"x")
            await nc.publish(subjects.adverts(FED), b"x")
            await nc.publish(subjects.settlements(FED, origin.did), b"allowed")
            await nc.flush()
            with anyio.fail_after(5):
                while len(errors) < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)
        finally:
            await nc.close()
    text = " ".join(errors)
    assert "bids" in text and "receipts" in text and "adverts" in text, errors
    assert "settlements" not in text, errors


async def test_cli_submit_authenticates_with_its_nkey_seed_and_key(tmp_path: Path):
    executor, origin = Identity.generate(), Identity.generate()
    members = {"node": [executor.did], "originator": [origin.did]}
    key = tmp_path / "origin.key"
    save_identity(origin, key)
    with closed_nats_server(members, federation=FED) as server:
        seed = member_options(server.url, origin, tmp_path).nkeys_seed
        assert seed is not None
        cfg = node_config(0, capabilities=("echo",))
        opts = member_options(server.url, executor, tmp_path)
        async with Node(identity=executor, nats=opts, config=cfg):
            base = ["submit", "--nats", server.url, "--capability", "echo", "--payload", "hi"]
            ok = await anyio.to_thread.run_sync(
                lambda: run_cli(*base, "--key", str(key), "--nats-nkey-seed-file", seed)
            )
            assert ok.returncode == 0, ok.stderr
            assert "hi" in ok.stdout and executor.did in ok.stdout
            refused = await anyio.to_thread.run_sync(lambda: run_cli(*base))
            assert refused.returncode != 0
            assert "error:" in refused.stderr and "refused the connection" in refused.stderr
