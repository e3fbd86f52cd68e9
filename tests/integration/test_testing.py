"""crankmesh.testing starts real nats-servers; crankmesh.transport connects to them."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

import anyio
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from crankmesh import testing
from crankmesh.protocol.errors import ClientStateError, ServerError, TransportError
from crankmesh.testing import NatsCluster, NatsServer
from crankmesh.transport import NatsOptions, connect, find_nats_server_binary

pytestmark = [pytest.mark.integration]

# The fixtures under test, as users get them (these win over any copy in tests/conftest.py).
nats_server = testing.nats_server
nats_cluster = testing.nats_cluster


async def _round_trip(publisher: Client, subscriber: Client, subject: str) -> bytes:
    """Publish until the subscriber sees a message (interest crosses routes asynchronously)."""
    sub = await subscriber.subscribe(subject)
    await subscriber.flush()
    try:
        with anyio.fail_after(5):
            while True:
                await publisher.publish(subject, b"ping")
                await publisher.flush()
                try:
                    msg = await sub.next_msg(timeout=0.1)
                except nats.errors.TimeoutError:
                    continue
                data: bytes = msg.data
                return data
    finally:
        await sub.unsubscribe()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------- one server


@pytest.mark.anyio
async def test_server_picks_its_own_port_and_pubsub_round_trips(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert nats_server.port != 4222
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    nc = await connect(nats_server.client_options(name="round-trip"))
    async with nc:
        assert await _round_trip(nc, nc, "crank.test.hello") == b"ping"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a close is no loss


@pytest.mark.anyio
async def test_jetstream_deduplicates_by_msg_id(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.client_options())
    async with nc:
        js = nc.jetstream()
        await js.add_stream(name="RECEIPTS", subjects=["crank.test.receipts.>"])
        headers = {"Nats-Msg-Id": "bafy-receipt-1"}
        first = await js.publish("crank.test.receipts.a", b"r1", headers=headers)
        second = await js.publish("crank.test.receipts.a", b"r1", headers=headers)
        assert not first.duplicate
        assert second.duplicate
        assert (await js.stream_info("RECEIPTS")).state.messages == 1


@pytest.mark.anyio
async def test_async_context_manager_starts_and_stop_is_clean_and_idempotent() -> None:
    async with NatsServer() as server:
        pid, store = server.pid, server.store_dir
        assert store is not None and store.is_dir()
        assert "Server is ready" in server.logs
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not store.exists()
    assert not server.is_running
    server.stop()
    await server.aclose()
    with pytest.raises(ClientStateError, match="create a new one"):
        server.start()


def test_two_servers_at_once_get_different_ports() -> None:
    with NatsServer(jetstream=False) as a, NatsServer(jetstream=False) as b:
        assert a.port != b.port
        assert a.store_dir is None


@pytest.mark.anyio
async def test_killed_server_restarts_on_same_port_and_client_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconnected = anyio.Event()

    async def on_disconnect() -> None:
        raise RuntimeError("a broken user callback must not break the connection")

    async def on_reconnect() -> None:
        reconnected.set()

    caplog.set_level(logging.INFO, logger="crankmesh.transport")
    async with NatsServer() as server:
        port = server.port
        nc = await connect(
            server.client_options(), on_disconnect=on_disconnect, on_reconnect=on_reconnect
        )
        async with nc:
            js = nc.jetstream()
            await js.add_stream(name="KEEP", subjects=["crank.test.keep"])
            await js.publish("crank.test.keep", b"survives")
            server.kill()
            assert not server.is_running
            await server.arestart()
            assert server.port == port
            with anyio.fail_after(5):
                await reconnected.wait()
            assert await _round_trip(nc, nc, "crank.test.after") == b"ping"
            assert (await js.stream_info("KEEP")).state.messages == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("disconnected from NATS server") for m in messages)
    assert any(m.startswith("reconnected to NATS server") for m in messages)
    assert any("on_disconnect callback raised" in m for m in messages)


@pytest.mark.anyio
async def test_a_client_without_reconnects_closes_when_its_server_dies(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    lost = anyio.Event()

    async def on_disconnect() -> None:
        lost.set()

    options = nats_server.client_options(max_reconnect_attempts=0)
    nc = await connect(options, on_disconnect=on_disconnect)
    async with nc:
        nats_server.kill()
        with anyio.fail_after(5):
            await lost.wait()
        assert nc.is_closed
    assert any("reconnecting is off" in r.getMessage() for r in caplog.records)


def test_a_server_that_cannot_start_raises_server_error_with_its_log() -> None:
    server = NatsServer(extra_config="this is { not a valid config")
    with pytest.raises(ServerError, match="exited with status") as info:
        server.start()
    assert "last log lines" in str(info.value)
    with pytest.raises(ClientStateError):
        server.restart()


def test_find_nats_server_binary() -> None:
    assert Path(find_nats_server_binary()).name.startswith("nats-server")


# -------------------------------------------------------------------------- transport


@pytest.mark.anyio
@pytest.mark.parametrize("max_reconnect_attempts", [1, 0, -1])
async def test_connect_to_a_dead_url_raises_transport_error_quickly(
    max_reconnect_attempts: int,
) -> None:
    url = f"nats://127.0.0.1:{_unused_port()}"
    options = NatsOptions(
        servers=(url,),
        connect_timeout_s=0.5,
        initial_connect_timeout_s=1.0,
        reconnect_time_wait_s=0.1,
        max_reconnect_attempts=max_reconnect_attempts,
    )
    started = time.monotonic()
    with pytest.raises(TransportError, match=url):
        await connect(options)
    assert time.monotonic() - started < 2.0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("server_auth", "good"),
    [
        ({"token": "s3cret-token"}, {"token": "s3cret-token"}),
        ({"user": "alice", "password": "pa55"}, {"user": "alice", "password": "pa55"}),
        ({"authorization": '  token: "blocktoken"'}, {"token": "blocktoken"}),
    ],
    ids=["token", "user-password", "authorization-block"],
)
async def test_server_with_auth_refuses_a_client_without_credentials(
    server_auth: dict[str, str], good: dict[str, str]
) -> None:
    async with NatsServer(jetstream=False, **server_auth) as server:  # type: ignore[arg-type]
        bare = NatsOptions(servers=(server.url,), initial_connect_timeout_s=5.0)
        started = time.monotonic()
        with pytest.raises(TransportError, match="refused") as info:
            await connect(bare)
        assert time.monotonic() - started < 2.0  # rejected credentials are not retried
        for secret in good.values():
            assert secret not in str(info.value)
        nc = await connect(NatsOptions(servers=(server.url,), **good))  # type: ignore[arg-type]
        async with nc:
            assert await _round_trip(nc, nc, "crank.test.auth") == b"ping"


@pytest.mark.anyio
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_server_accepts_a_client_that_trusts_its_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await anyio.run_process(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
    )  # fmt: skip
    async with NatsServer(jetstream=False, tls_cert_file=str(cert), tls_key_file=str(key)) as s:
        assert s.url.startswith("tls://")
        started = time.monotonic()
        with pytest.raises(TransportError, match="refused"):
            await connect(NatsOptions(servers=(s.url,)))  # does not trust the cert
        assert time.monotonic() - started < 2.0
        nc = await connect(NatsOptions(servers=(s.url,), tls_ca_file=str(cert)))
        async with nc:
            assert await _round_trip(nc, nc, "crank.test.tls") == b"ping"


def test_options_never_show_secrets() -> None:
    options = NatsOptions.from_url("nats://bob:hunter2@a:4222, nats://tok@b:4222", name="n")
    assert options.servers == ("nats://bob:hunter2@a:4222", "nats://tok@b:4222")
    secret = NatsOptions(servers=("nats://a:4222",), user="bob", password="hunter2")
    for text in (repr(options), repr(options.redacted()), repr(secret), repr(secret.redacted())):
        assert "hunter2" not in text and "tok@" not in text
    assert "***" in repr(secret)
    with pytest.raises(ValueError, match="scheme"):
        NatsOptions(servers=("http://a:4222",))
    with pytest.raises(TypeError, match="from_url"):
        NatsOptions(servers="nats://a:4222")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- cluster


@pytest.mark.anyio
async def test_cluster_routes_messages_and_replicates_jetstream(nats_cluster: NatsCluster) -> None:
    assert len(set(nats_cluster.urls)) == 3
    assert nats_cluster.url == ",".join(nats_cluster.urls)
    n0 = await connect(NatsOptions(servers=(nats_cluster.urls[0],)))
    n2 = await connect(NatsOptions(servers=(nats_cluster.urls[2],)))
    async with n0, n2:
        assert await _round_trip(n2, n0, "crank.test.cluster") == b"ping"
        js = n0.jetstream()
        info = await js.add_stream(name="R3", subjects=["crank.test.r3"], num_replicas=3)
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        # A new replicated stream elects its own leader, and its subject interest reaches the
        # other servers, a moment after add_stream returns: until then, "no responders", or
        # (on a loaded machine, mid-election) no answer within the publish timeout.
        with anyio.fail_after(20):
            while True:
                try:
                    ack = await n2.jetstream().publish("crank.test.r3", b"x", timeout=2)
                    break
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                    await anyio.sleep(0.05)
        assert ack.stream == "R3"


@pytest.mark.anyio
async def test_cluster_still_delivers_after_a_server_is_killed_and_takes_it_back() -> None:
    async with NatsCluster() as cluster:
        cluster.kill(2)
        assert not cluster.servers[2].is_running
        n0 = await connect(NatsOptions(servers=(cluster.urls[0],)))
        n1 = await connect(NatsOptions(servers=(cluster.urls[1],)))
        async with n0, n1:
            assert await _round_trip(n1, n0, "crank.test.survivors") == b"ping"
            await cluster.arestart(2)
            n2 = await connect(NatsOptions(servers=(cluster.urls[2],)))
            async with n2:
                assert await _round_trip(n2, n0, "crank.test.rejoined") == b"ping"


def test_cluster_of_two_in_a_sync_context_manager() -> None:
    with NatsCluster(size=2, jetstream=False) as cluster:
        assert [s.server_name for s in cluster.servers] == ["n0", "n1"]
    assert not any(s.is_running for s in cluster.servers)
    cluster.stop()
    with pytest.raises(ValueError, match="at least 2"):
        NatsCluster(size=1)
