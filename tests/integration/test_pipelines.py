"""Pipelines on real nodes: a DAG with fan-out and fan-in, plans, mappings, budgets,
privacy of step inputs, checkpoints and reuse."""

from __future__ import annotations

import json
import os
import time

import anyio
import pytest

from crankmesh import Job, Pipeline, PipelineBudgetExceeded, StepFailed
from crankmesh.originator._pipeline_log import RunLog
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Receipt, decode_message
from crankmesh.protocol.tokens import issue, verify_chain
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name

from ..unit.originator.test_pipeline_render import check_dot, parse_mermaid
from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CAPS = ("echo", "python.run", "email.classify.spam-v1")

EXTRACT = "result = args['mails']"
COUNT = "result = sum(1 for v in args['inputs']['classify'] if '\"spam\"' in v)"
SUMMARY = (
    "mails = args['inputs']['extract']\n"
    "print(f\"{args['inputs']['count']} of {len(mails)} mails are spam\")"
)
MAILS = [
    "WIN a FREE prize now!!! click here to claim your cash",
    "Hi Bob, the meeting is moved to 3pm tomorrow, see agenda attached",
    "Cheap pills, limited offer, buy now, 100% free money",
]


async def _stream_receipts(url: str, want: int) -> dict[str, Receipt]:
    """Receipts persisted in the federation's JetStream stream, by CID (waits for ``want``)."""
    out: dict[str, Receipt] = {}
    async with raw_connection(url) as nc:
        with anyio.move_on_after(10):
            while len(out) < want:
                for rec in await read_stream(nc, stream_name("default")):
                    env = open_envelope(rec.data)
                    if env.type == "receipt":
                        out[env.cid] = decode_message(env, Receipt)[1]
                await anyio.sleep(0.1)
    return out


def four_step(**kw: object) -> Pipeline:
    p = Pipeline("mail-triage", **kw)  # type: ignore[arg-type]
    p.step("extract", Job.python(EXTRACT, {"mails": MAILS}))
    p.step("classify", Job.call("email.classify.spam-v1", b""), each="extract")
    p.step("count", Job.python(COUNT), inputs=["classify"])
    p.step("summarize", Job.python(SUMMARY), inputs=["extract", "count"])
    return p


async def test_four_step_dag_with_fan_out_and_fan_in_runs_with_verified_receipts(
    nats_server, tmp_path
):
    cfgs = [node_config(i, capabilities=CAPS) for i in range(3)]
    async with mesh(nats_server.url, cfgs) as nodes:
        dids = {n.did for n in nodes}
        async with client_for(nats_server.url, "email.classify.spam-v1", 3) as client:
            await client.wait_for_peers("python.run", 3, wait_s=10)
            p = four_step()
            plan = await p.plan(client)
            assert plan.ok
            for sp in plan.steps:
                assert {c.executor for c in sp.compatible} == dids, sp.step
                assert sp.expected is not None and sp.expected.price == 1000  # node-0 is cheapest
            run = await p.run(client, state_dir=tmp_path)
            in_stream = await _stream_receipts(nats_server.url, len(run.records))
    assert [r.key for r in run.records] == [
        "extract", "classify[0]", "classify[1]", "classify[2]", "count", "summarize"
    ]
    assert run.value("summarize").strip() == "2 of 3 mails are spam"
    log = RunLog(tmp_path, run.run_id)
    for r in run.records:
        assert r.source == "run" and r.executor in dids
        stored = log.verified(r.job_cid, r.receipt_cid, r.result_cid)
        assert stored is not None, r.key  # signature, CID and result re-verified
        assert stored.receipt.signer == r.executor and stored.receipt.job == r.job_cid
    # Inputs by reference: each consumer names the result CIDs it consumed.
    by = {r.key: r for r in run.records}
    assert by["classify[1]"].inputs == {"extract": [by["extract"].result_cid]}
    assert by["count"].inputs == {
        "classify": [by[f"classify[{i}]"].result_cid for i in range(3)]
    }
    assert run.costs().total == {"USD": 6000}
    assert run.costs().per_step["classify"] == {"USD": 3000}
    # The mapping matches the receipts persisted in JetStream, unit by unit.
    for r in run.records:
        receipt = in_stream[r.receipt_cid]
        assert (receipt.signer, receipt.job) == (r.executor, r.job_cid)
        assert receipt.result == r.result_cid
    # Plan and run as Mermaid and DOT: well formed, every step and executor named.
    used = {r.executor for r in run.records}  # the plan names every candidate, the run those used
    for text, named in ((plan.render("mermaid"), dids), (run.render("mermaid"), used)):
        nodes, _, labels = parse_mermaid(text)
        assert {"s_extract", "s_classify", "s_count", "s_summarize"} <= nodes
        assert all(any(d in label for label in labels) for d in named)
    for text, named in ((plan.render("dot"), dids), (run.render("dot"), used)):
        check_dot(text)
        assert all(f'"executor:{d}"' in text for d in named)
        assert all(f'"step:{n}"' in text for n in ("extract", "classify", "count", "summarize"))


async def test_pipeline_budget_below_the_sum_halts_naming_per_step_spend(nats_server, tmp_path):
    me, treasury = Identity.generate(), Identity.generate()
    now = time.time_ns() // 1_000_000
    token = issue(
        treasury, audience=me.did, scope="*", amount=3_500, now_ms=now, ttl_ms=600_000
    )
    cfgs = [node_config(0, capabilities=CAPS, price=1000)]
    async with mesh(nats_server.url, cfgs):
        async with client_for(nats_server.url, "python.run", 1, identity=me) as client:
            p = four_step(budget=[token])
            with pytest.raises(PipelineBudgetExceeded) as info:
                await p.run(client, state_dir=tmp_path)
            err = info.value
            grant = verify_chain([token], now_ms=now, holder=me.did)
            spent = client.budgets.spent(grant)
    # extract paid 1000; two classify items fitted in the 2500 left, the third did not.
    assert err.step == "classify"
    assert err.spent_by_step == {"extract": 1000, "classify": 2000}
    assert err.remaining_micros == 500
    assert spent == 3000 <= 3_500  # never overspent
    assert "extract 1000" in str(err) and "classify" in str(err)


async def test_step_input_from_an_earlier_result_never_appears_in_plaintext(nats_server, tmp_path):
    secret = "SECRET-" + os.urandom(10).hex()
    cfgs = [node_config(i, capabilities=CAPS) for i in range(2)]
    async with mesh(nats_server.url, cfgs):
        async with raw_connection(nats_server.url) as spy:
            seen: list[tuple[str, bytes]] = []

            async def record(msg):
                seen.append((msg.subject, msg.data))

            await spy.subscribe("crank.>", cb=record)
            await spy.subscribe("_INBOX.>", cb=record)
            await spy.flush()
            async with client_for(nats_server.url, "python.run", 2) as client:
                p = Pipeline("private")
                # The secret exists only as step a's result, built at run time.
                p.step("a", Job.python("result = 'SECRET-' + args['h']", {"h": secret[7:]}))
                p.step("b", Job.python("result = args['inputs']['a'][::-1]"), inputs=["a"])
                p.step("c", Job.echo(b""), inputs=["a"])
                run = await p.run(client, state_dir=tmp_path)
            await anyio.sleep(0.2)
    assert run.value("b") == secret[::-1] and run.value("c") == secret
    assert len(seen) > 10
    for subject, data in seen:
        assert secret.encode() not in data, f"step input leaked on {subject}"
        assert secret[::-1].encode() not in data, f"step result leaked on {subject}"


async def test_identical_work_is_paid_once_per_run_and_reused_across_runs(nats_server, tmp_path):
    cfgs = [node_config(0, capabilities=CAPS)]
    async with mesh(nats_server.url, cfgs):
        async with client_for(nats_server.url, "python.run", 1) as client:
            p = Pipeline("dup")
            p.step("x", Job.python("result = 21 * 2"))
            p.step("y", Job.python("result = 21 * 2"))
            p.step("z", Job.python("result = args['inputs']['x'] + 1"), inputs=["x"])
            first = await p.run(client, state_dir=tmp_path)
            sources = {r.key: r.source for r in first.records}
            assert sorted(sources.values()) == ["duplicate", "run", "run"]
            assert first.costs().total == {"USD": 2000}
            second = await p.run(client, state_dir=tmp_path, reuse=True)
            third = await p.run(client, state_dir=tmp_path)  # no reuse: pays again
    assert {r.source for r in second.records} <= {"reused", "duplicate"}
    assert second.costs().total == {"USD": 0}
    assert second.value("z") == 43
    assert third.costs().total == {"USD": 2000}


async def test_resume_skips_the_verified_steps_of_the_named_run(nats_server, tmp_path):
    cfgs = [node_config(0, capabilities=CAPS)]
    async with mesh(nats_server.url, cfgs):
        async with client_for(nats_server.url, "python.run", 1) as client:
            p = Pipeline("resumable")
            p.step("a", Job.python("result = 1"))
            p.step("b", Job.python("result = args['inputs']['a'] + 1"), inputs=["a"])
            p.step("c", Job.python("raise SystemExit(3)"), inputs=["b"])
            with pytest.raises(StepFailed) as info:
                await p.run(client, state_dir=tmp_path, run_id="r1")
            assert [r.key for r in info.value.records] == ["a", "b"]
            # Fix step c and resume: a and b come from the log, only c is paid.
            q = Pipeline("resumable")
            q.step("a", Job.python("result = 1"))
            q.step("b", Job.python("result = args['inputs']['a'] + 1"), inputs=["a"])
            q.step("c", Job.python("result = args['inputs']['b'] * 10"), inputs=["b"])
            run = await q.run(client, state_dir=tmp_path, resume="r1")
    assert {r.key: r.source for r in run.records} == {"a": "resumed", "b": "resumed", "c": "run"}
    assert run.value("c") == 20
    lines = [json.loads(x) for x in (tmp_path / "runs" / "r1.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines].count("run") == 2


async def test_costs_report_per_step_total_and_what_remains_of_the_budget(nats_server, tmp_path):
    me, treasury = Identity.generate(), Identity.generate()
    now = time.time_ns() // 1_000_000
    token = issue(treasury, audience=me.did, scope="*", amount=10_000, now_ms=now, ttl_ms=600_000)
    async with mesh(nats_server.url, [node_config(0, capabilities=CAPS, price=1000)]):
        async with client_for(nats_server.url, "python.run", 1, identity=me) as client:
            run = await four_step(budget=[token]).run(client, state_dir=tmp_path)
    costs = run.costs()
    assert costs.per_step == {
        "extract": {"USD": 1000}, "classify": {"USD": 3000},
        "count": {"USD": 1000}, "summarize": {"USD": 1000},
    }
    assert costs.total == {"USD": 6000}
    assert (costs.budget_remaining, costs.budget_currency) == (4000, "USD")
    assert costs.to_dict()["budget_remaining"] == 4000
    assert all(r.job_cid for r in run.records)


async def test_per_step_requirements_route_steps_and_the_plan_explains_mismatches(
    nats_server, tmp_path
):
    plain = node_config(0, capabilities=CAPS, price=1000)
    video = node_config(1, capabilities=CAPS, price=2000, hardware={"codecs": {"h264": "hardware"}})
    async with mesh(nats_server.url, [plain, video]) as (n0, n1):
        async with client_for(nats_server.url, "python.run", 2) as client:
            p = Pipeline("video")
            p.step("probe", Job.python("result = 'clip'"))
            p.step(
                "encode",
                Job.python("result = args['inputs']['probe'] + '.h264'",
                           requirements={"codecs": ["h264"]}),
                inputs=["probe"],
            )
            plan = await p.plan(client)
            enc = plan.steps[1]
            assert [c.executor for c in enc.compatible] == [n1.did]
            bad = next(c for c in enc.candidates if c.executor == n0.did)
            assert not bad.compatible and any("h264" in m for m in bad.mismatches)
            run = await p.run(client, state_dir=tmp_path)
    assert run.record("probe").executor == n0.did  # cheapest, no requirement
    assert run.record("encode").executor == n1.did  # the only one with the codec
    assert run.value("encode") == "clip.h264"


async def test_concurrency_bounds_how_many_units_run_at_once(nats_server, tmp_path):
    cfgs = [node_config(0, capabilities=CAPS, max_concurrency=4)]
    sleepy = "import time\ntime.sleep(0.3)\nresult = args['item']"

    def windows(run) -> list[tuple[int, int]]:
        out = []
        for r in run.records:
            if r.step == "each":
                stored = RunLog(tmp_path, run.run_id).verified(
                    r.job_cid, r.receipt_cid, r.result_cid
                )
                assert stored is not None
                end = stored.receipt.ts
                out.append((end - stored.receipt.metering.wall_us // 1000, end))
        return sorted(out)

    async with mesh(nats_server.url, cfgs):
        async with client_for(nats_server.url, "python.run", 1) as client:
            p = Pipeline("bounded")
            p.step("items", Job.python("result = [1, 2, 3]"))
            p.step("each", Job.python(sleepy), each="items")
            serial = windows(await p.run(client, state_dir=tmp_path, concurrency=1))
            parallel = windows(await p.run(client, state_dir=tmp_path, concurrency=3))
    assert all(a[1] <= b[0] + 5 for a, b in zip(serial, serial[1:], strict=False)), serial
    assert any(a[1] > b[0] + 50 for a, b in zip(parallel, parallel[1:], strict=False)), parallel


async def test_plan_ranks_candidates_by_the_step_policy_and_applies_its_filters(nats_server):
    cfgs = [node_config(0, capabilities=CAPS, price=3000), node_config(1, capabilities=CAPS,
                                                                       price=1000)]
    async with mesh(nats_server.url, cfgs) as (dear, cheap):
        async with client_for(nats_server.url, "python.run", 2) as client:
            p = Pipeline("ranked")
            p.step("any", Job.python("pass", policy="cost"))
            p.step("capped", Job.python("pass", max_price=2000))
            plan = await p.plan(client)
    free, capped = plan.steps
    ranks = {c.executor: c.rank for c in free.candidates}
    assert ranks == {cheap.did: 1, dear.did: 2}
    assert free.expected is not None and free.expected.executor == cheap.did
    over = next(c for c in capped.candidates if c.executor == dear.did)
    assert not over.compatible and any(m.startswith("max_price:") for m in over.mismatches)
    assert [c.executor for c in capped.compatible] == [cheap.did]
