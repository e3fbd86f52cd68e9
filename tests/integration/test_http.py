"""The /metrics and /healthz endpoint on a real socket: parsable metrics, health codes,
404s, and robustness against garbage, slow and abandoned clients.

The server is prometheus_client's (wsgiref's http.server underneath), which answers
HTTP/1.0 status lines; every answer closes the connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crankmesh.http import serve_http
from crankmesh.observability import Metrics

pytestmark = [pytest.mark.integration]


@asynccontextmanager
async def endpoint(
    metrics: Metrics,
    health: Callable[[], Mapping[str, Any]] = lambda: {"status": "ok"},
    **kwargs: Any,
) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(
            partial(serve_http, metrics.registry, host="127.0.0.1", port=0, health=health, **kwargs)
        )
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def raw(port: int, data: bytes, *, read: bool = True, eof: bool = False) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        if data:
            await s.send(data)
        if eof:
            await s.send_eof()
        if not read:
            return b""
        out = bytearray()
        with anyio.fail_after(5):
            while True:
                try:
                    out += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        return bytes(out)


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reply = await raw(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.anyio
async def test_metrics_parse_as_prometheus_text() -> None:
    metrics = Metrics()
    metrics.job_bids.labels(capability="echo").inc(3)
    metrics.execution_seconds.labels(capability="echo").observe(0.01)
    async with endpoint(metrics) as port:
        assert port > 0
        status, headers, body = await get(port, "/metrics")
        # prometheus_client's exposition: OpenMetrics when the scraper asks for it
        om = await raw(
            port, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n"
        )
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert headers["cache-control"] == "no-store"  # and raw() read to EOF: the server closed
    assert int(headers["content-length"]) == len(body)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    bids = families["crankmesh_job_bids"].samples
    assert [(s.name, s.labels, s.value) for s in bids] == [
        ("crankmesh_job_bids_total", {"capability": "echo"}, 3.0)
    ]
    assert "crankmesh_execution_seconds" in families and "crankmesh_assignments" in families
    # RFC 0022 §7's names stay, as aliases that follow the crankmesh counters
    alias = [s for s in families["job_bids"].samples if s.name == "job_bids_total"]
    assert alias[0].labels == {"capability": "echo"} and alias[0].value == 3
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert "python_info" in families
    assert b"application/openmetrics-text" in om and om.endswith(b"# EOF\n")


@pytest.mark.anyio
async def test_healthz_is_200_json_when_healthy_and_503_otherwise() -> None:
    state: dict[str, Any] = {"status": "ok", "did": "did:key:z6Mk", "draining": False}
    async with endpoint(Metrics(), health=lambda: state) as port:
        status, headers, body = await get(port, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == state
        state["status"] = "draining"
        status, _, body = await get(port, "/healthz?verbose=1")
        assert status == 503 and json.loads(body)["status"] == "draining"


@pytest.mark.anyio
async def test_healthz_that_raises_is_503_and_the_server_lives_on() -> None:
    def broken() -> Mapping[str, Any]:
        raise RuntimeError("nats gone")

    async with endpoint(Metrics(), health=broken) as port:
        status, _, body = await get(port, "/healthz")
        assert status == 503
        assert json.loads(body) == {"status": "error", "error": "RuntimeError: nats gone"}
        assert (await get(port, "/metrics"))[0] == 200


@pytest.mark.anyio
async def test_unknown_path_is_404_and_other_methods_405() -> None:
    async with endpoint(Metrics()) as port:
        assert (await get(port, "/"))[0] == 404
        assert (await get(port, "/metrics/x"))[0] == 404
        status, headers, _ = await get(port, "/metrics", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, headers, body = await get(port, "/metrics", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.anyio
async def test_garbage_requests_get_4xx_and_never_crash_the_server() -> None:
    async with endpoint(Metrics()) as port:
        for junk, code in (
            (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
            (b"GET /metrics HTTP/x.y\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1 extra\r\n\r\n", b"400"),
            (b"get /metrics HTTP/1.1\r\n\r\n", b"405"),
            (b"GET metrics HTTP/1.1\r\n\r\n", b"404"),
        ):
            reply = await raw(port, junk, eof=True)
            assert reply.startswith(b"HTTP/1.") and reply[9:12] == code, (junk, reply[:40])
        for junk in (b"\x00\xff\xfe garbage\r\n\r\n", b"GET\r\n\r\n"):
            reply = await raw(port, junk, eof=True)
            assert reply.startswith(b"HTTP/1.0 400"), (junk, reply[:40])
        reply = await raw(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.") and reply[9:12] == b"414"
        many = b"".join(b"X-%d: y\r\n" % i for i in range(200))
        reply = await raw(port, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")
        assert reply.startswith(b"HTTP/1.") and reply[9:12] == b"431"
        await raw(port, b"", read=False)  # connect and leave
        assert (await get(port, "/metrics"))[0] == 200


@pytest.mark.anyio
async def test_a_slow_client_is_cut_off_without_blocking_others() -> None:
    async with endpoint(Metrics(), timeout_s=0.3) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as slow:
            await slow.send(b"GET /metr")  # ... and never finishes
            assert (await get(port, "/healthz"))[0] == 200  # others are served meanwhile
            with anyio.fail_after(3):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await slow.receive()


@pytest.mark.anyio
async def test_connections_beyond_the_limit_are_closed() -> None:
    async with endpoint(Metrics(), max_connections=1, timeout_s=2) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as first:
            await anyio.sleep(0.05)  # let the server accept it
            with anyio.fail_after(3):
                assert await raw(port, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
            await first.send(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (await first.receive()).startswith(b"HTTP/1.0 200")
        # the slot is free once the server thread has closed the first connection
        for _ in range(300):
            if (await raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.0 200"):
                break
            await anyio.sleep(0.01)
        else:
            pytest.fail("the connection slot was never released")


@pytest.mark.anyio
async def test_port_in_use_raises_before_started() -> None:
    async with endpoint(Metrics()) as port:
        with pytest.raises(OSError):
            await serve_http(Metrics().registry, port=port, health=dict)


def test_every_metric_is_documented_in_operating_md() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operating.md").read_text()
    for family in Metrics().registry.collect():
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in doc, f"docs/operating.md does not list the metric {shown}"
