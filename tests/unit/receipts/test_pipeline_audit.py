"""Grouping audited receipts by pipeline run: verified, missing, mismatched, paid twice."""

from __future__ import annotations

from crankmesh.receipts.audit import audit
from crankmesh.receipts.pipeline_audit import group_by_pipeline_run

from . import T0, History, ident


def _entry(key: str, job) -> dict[str, object]:
    return {"kind": "step", "key": key, "job_cid": job.receipt.body["job"],
            "receipt_cid": job.receipt.cid}


def test_a_clean_run_verifies_every_step_and_problems_are_named() -> None:
    h = History()
    orig, ex = ident("orig"), ident("ex")
    a, b, c = (h.job(orig, ex) for _ in range(3))
    lost = h.job(orig, ex, add=False)  # never reached the stream
    failed = h.job(orig, ex, status="error")
    report = audit(h.records, now_ms=T0 + 10**6)
    runs = {
        "good": [{"kind": "run", "pipeline": "p"}, _entry("a", a), _entry("b", b)],
        "bad": [
            {"kind": "run", "pipeline": "q"},
            _entry("c", c),
            _entry("lost", lost),
            _entry("failed", failed),
            {**_entry("wrong", a), "job_cid": c.receipt.body["job"]},
            {"kind": "step", "key": 7},
        ],
    }
    good, bad = group_by_pipeline_run(h.records, report, runs)
    assert good.ok and good.pipeline == "p"
    assert [s.verdict for s in good.steps] == ["verified", "verified"]
    assert good.steps[0].executor == ex.did
    verdicts = {s.key: s for s in bad.steps}
    assert not bad.ok and verdicts["c"].verdict == "verified"
    assert verdicts["lost"].verdict == "missing"
    assert verdicts["failed"].verdict == "mismatch"
    assert "status is error" in verdicts["failed"].problems[0]
    assert verdicts["wrong"].verdict == "mismatch"
    assert bad.problems and "malformed step entry" in bad.problems[0]
    assert "PROBLEMS" in bad.render() and "missing" in bad.render()


def test_a_second_ok_receipt_for_a_step_job_is_reported() -> None:
    h = History()
    orig, ex, other = ident("orig"), ident("ex"), ident("other")
    a = h.job(orig, ex)
    # The same job executed again elsewhere and receipted ok: paid twice.
    twice = h.job(orig, other, add=False)
    from crankmesh.protocol.envelope import sign_envelope

    body = dict(twice.receipt.body)
    body["job"] = a.receipt.body["job"]
    body.pop("signer", None)
    dup = sign_envelope(other, "receipt", body)
    h.add(dup)
    report = audit(h.records, now_ms=T0 + 10**6)
    (run,) = group_by_pipeline_run(h.records, report, {"r": [_entry("a", a)]})
    assert not run.ok
    assert run.steps[0].verdict == "mismatch"
    assert dup.cid in run.steps[0].problems[0]
