"""Payload privacy (RFC 0022 §1, §8): only the winning executor ever sees the payload."""

from __future__ import annotations

import os

import anyio
import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [
    pytest.mark.integration, pytest.mark.anyio,
    pytest.mark.usefixtures("both_paths"),  # quote and call-for-bids paths
]


async def test_wildcard_subscriber_never_sees_payload_or_result_plaintext(
    nats_server, both_paths
):
    secret_in = "IN-" + os.urandom(12).hex()
    secret_out = "OUT-" + os.urandom(12).hex()
    cfgs = [node_config(i, capabilities=("echo", "python.run")) for i in range(3)]
    async with mesh(nats_server.url, cfgs):
        async with raw_connection(nats_server.url) as spy:
            seen: list[tuple[str, bytes]] = []

            async def record(msg):
                seen.append((msg.subject, msg.data))

            await spy.subscribe("crank.>", cb=record)
            await spy.subscribe("_INBOX.>", cb=record)  # replies, too
            await spy.flush()
            async with client_for(nats_server.url, "python.run", 3) as client:
                code = f"# {secret_in}\nprint({secret_out!r})"
                r = await client.run(Job.python(code))
                assert r.ok and r.stdout.strip() == secret_out
                e = await client.run(Job.echo(secret_in.encode()))
                assert e.output == secret_in.encode()
            await anyio.sleep(0.2)
    assert len(seen) > 10  # the spy really saw the traffic: announces, bids, receipts ...
    kinds = {
        subject.split(".")[3] if subject.startswith("crank.") else "inbox" for subject, _ in seen
    }
    # on the quote path no Announce goes out: the Assignment (the spec and the boxed
    # payload) is the first message of the job, and its reply the receipt
    assert "inbox" in kinds and any(".assignment." in subject for subject, _ in seen)
    assert ("announce" in kinds) == (both_paths == "call_for_bids")
    for subject, data in seen:
        assert secret_in.encode() not in data, f"payload plaintext leaked on {subject}"
        assert secret_out.encode() not in data, f"result plaintext leaked on {subject}"
