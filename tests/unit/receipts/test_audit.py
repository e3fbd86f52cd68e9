"""The audit rules (RFC 0002 §5) on real signed histories: clean, then one tampering each."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crankmesh.protocol.envelope import sign_envelope
from crankmesh.protocol.messages import Settlement
from crankmesh.receipts.audit import FINDING_KINDS, AuditReport, Record, audit, p95

from . import FED, T0, History, clean_history, doc_cid, ident

NOW = T0 + 86_400_000
RFC = Path(__file__).resolve().parents[3] / "rfcs" / "0002-receipts-and-audit.md"


def kinds(report: AuditReport) -> list[str]:
    return [f.kind for f in report.findings]


def run(records: list[Record], **kw: object) -> AuditReport:
    report = audit(records, now_ms=NOW, **kw)  # type: ignore[arg-type]
    json.dumps(report.to_dict())  # always JSON-serialisable
    report.render()
    return report


def test_clean_three_executor_history_audits_ok() -> None:
    h, people = clean_history(jobs_per_executor=6)
    report = run(h.records)
    assert report.ok, report.render()
    assert report.findings == ()
    assert report.counts == {"bid": 18, "receipt": 18, "settlement": 18, "token": 2}
    assert set(report.executors) == {people[n].did for n in ("ex-a", "ex-b", "ex-c")}
    for k, name in enumerate(("ex-a", "ex-b", "ex-c")):
        s = report.executors[people[name].did]
        assert (s.receipts, s.jobs, s.ok, s.settled) == (6, 6, 6, 6)
        assert s.success_rate == 1.0
        assert s.charged == {"USD": 6 * 1000 * (k + 1)}
        assert s.promised_p95_us == 2000
        assert s.observed_p95_us == 1200  # settlement observed_us wins over wall_us
        assert s.slo_compliance == 1.0
        assert (s.first_seq, s.last_seq, s.equivocated, s.misconduct) == (1, 6, False, 0)
    (budget,) = report.budgets
    assert budget.spent == 6 * (1000 + 2000 + 3000) and budget.cap == 100_000
    assert not budget.over and budget.issuer == people["bank"].did
    assert len(budget.originators) == 2


def test_record_order_and_duplicates_do_not_matter() -> None:
    h, _ = clean_history(3)
    records = h.records
    report = run(list(reversed(records)) + records[:5])
    assert report.ok, report.render()
    assert report.duplicates == 5
    assert report.records == len(records)


def test_flipped_byte_in_a_stored_receipt_body_is_one_bad_signature() -> None:
    h, people = clean_history(3)
    records = h.records
    i = next(i for i, r in enumerate(records) if ".receipts." in r.subject)
    victim = records[i]
    data = bytearray(victim.data)
    at = data.index(b"wall_us") + 2  # inside a str key of the signed body
    data[at] ^= 0x01
    records[i] = Record(victim.subject, bytes(data), victim.seq, victim.msg_id)
    report = run(records)
    assert kinds(report) == ["bad_signature"], report.render()
    (f,) = report.findings
    assert f.cid == victim.msg_id
    assert f.executor == people["ex-a"].did
    assert "no longer hash to its message id" in f.message
    # the settlement of that receipt, and the next receipt's prev, are not reported again


def test_flipped_byte_in_a_signature_is_one_bad_signature() -> None:
    h, _ = clean_history(2)
    records = h.records
    i = next(i for i, r in enumerate(records) if ".receipts." in r.subject)
    victim = records[i]
    data = bytearray(victim.data)
    data[data.index(b"\xa1s\xc4\x40") + 10] ^= 0x80
    records[i] = Record(victim.subject, bytes(data), victim.seq, victim.msg_id)
    report = run(records)
    assert kinds(report) == ["bad_signature"], report.render()
    assert report.findings[0].cid == victim.msg_id


def test_flipped_byte_that_breaks_the_encoding_is_malformed() -> None:
    h, _ = clean_history(1)
    records = h.records
    i = next(i for i, r in enumerate(records) if ".receipts." in r.subject)
    victim = records[i]
    records[i] = Record(victim.subject, b"\x85" + victim.data[1:], victim.seq, victim.msg_id)
    report = run(records)
    assert kinds(report) == ["malformed_envelope"], report.render()
    assert report.findings[0].cid == victim.msg_id


def test_record_stored_under_another_message_id() -> None:
    h, _ = clean_history(1)
    records = h.records
    i = next(i for i, r in enumerate(records) if ".settlements." in r.subject)
    r = records[i]
    records[i] = Record(r.subject, r.data, r.seq, records[0].msg_id)
    report = run(records)
    assert kinds(report) == ["cid_mismatch"], report.render()
    assert report.findings[0].cid == r.msg_id


def test_receipt_signed_by_someone_other_than_the_assigned_executor() -> None:
    h, people = clean_history(2)
    a, b, orig = people["ex-a"], people["ex-b"], people["orig-1"]
    # B signs the receipt (with its own, losing bid) of a job the originator settles as A's
    forged = h.job(orig, a, signer=b, bid_by=b)
    report = run(h.records)
    assert kinds(report) == ["executor_mismatch"], report.render()
    (f,) = report.findings
    assert f.cid == forged.receipt.cid
    assert f.executor == b.did
    assert a.did in f.message and b.did in f.message


def test_forked_chain_is_equivocation() -> None:
    h, people = clean_history(3)
    a, orig = people["ex-a"], people["orig-1"]
    seq, _ = h.heads[a.did]
    head = h.heads[a.did][1]
    h.job(orig, a)  # seq + 1
    fork = h.job(orig, a, seq=seq + 1, prev=head, advance=False)  # a second seq + 1
    h.job(orig, a)  # continues the first branch
    report = run(h.records)
    assert kinds(report) == ["equivocation"], report.render()
    (f,) = report.findings
    assert f.executor == a.did
    assert fork.receipt.cid in f.message
    assert report.executors[a.did].equivocated
    assert not report.executors[people["ex-b"].did].equivocated


def test_same_prev_with_different_seq_is_equivocation() -> None:
    h, people = clean_history(2)
    a, orig = people["ex-a"], people["orig-1"]
    seq, head = h.heads[a.did]
    h.job(orig, a)
    h.job(orig, a, seq=seq + 2, prev=head)  # skips a link: same prev as seq + 1
    report = run(h.records)
    assert kinds(report) == ["equivocation"], report.render()


def test_gap_in_a_chain() -> None:
    h, people = clean_history(2)
    a, orig = people["ex-a"], people["orig-1"]
    lost = h.job(orig, a)
    after = h.job(orig, a)
    h.job(orig, a)
    h.remove(lost.receipt, *([lost.settlement] if lost.settlement else []))
    report = run(h.records)
    assert kinds(report) == ["gap"], report.render()
    (f,) = report.findings
    assert f.executor == a.did
    assert f.cid == after.receipt.cid
    assert "seq 3" in f.message


def test_broken_link() -> None:
    h, people = clean_history(2)
    a, orig = people["ex-a"], people["orig-1"]
    h.job(orig, a)
    elsewhere = h.job(orig, people["ex-b"]).receipt.cid
    bad = h.job(orig, a, prev=elsewhere)
    report = run(h.records)
    assert kinds(report) == ["broken_link"], report.render()
    assert report.findings[0].cid == bad.receipt.cid
    assert report.executors[a.did].misconduct == 1


def test_charge_above_the_bid_is_overcharge() -> None:
    h, people = clean_history(2)
    greedy = h.job(people["orig-1"], people["ex-c"], price=1000, charge=1500)
    report = run(h.records)
    assert kinds(report) == ["overcharge"], report.render()
    (f,) = report.findings
    assert f.cid == greedy.receipt.cid
    assert "1500" in f.message and "1000" in f.message


def test_receipt_with_someone_elses_bid_or_another_jobs_bid() -> None:
    h, people = clean_history(1)
    foreign = h.job(people["orig-1"], people["ex-a"], bid_by=people["ex-b"])
    other = h.job(people["orig-1"], people["ex-a"], bid_job=doc_cid("another job"))
    assert other is not None
    report = run(h.records)
    assert sorted(kinds(report)) == ["bid_job_mismatch", "foreign_bid"], report.render()
    assert {f.cid for f in report.findings} == {foreign.receipt.cid, other.receipt.cid}


def test_two_ok_receipts_for_one_job_are_a_double_execution() -> None:
    h, people = clean_history(1)
    first = h.job(people["orig-1"], people["ex-a"])
    again = h.job(people["orig-1"], people["ex-b"], job_cid=first.receipt.body["job"])
    report = run(h.records)
    assert kinds(report) == ["double_execution"], report.render()
    assert not report.ok
    (f,) = report.findings
    assert f.cid == again.receipt.cid and f.executor == people["ex-b"].did
    assert first.receipt.cid in f.message and first.receipt.body["job"] in f.message


def test_a_failed_run_then_an_ok_one_for_the_same_job_is_no_finding() -> None:
    h, people = clean_history(1)
    failed = h.job(people["orig-1"], people["ex-a"], status="error")
    h.job(people["orig-1"], people["ex-b"], job_cid=failed.receipt.body["job"])
    report = run(h.records)
    assert report.ok, report.render()


def test_missing_bid() -> None:
    h, people = clean_history(1)
    j = h.job(people["orig-1"], people["ex-a"])
    h.remove(j.bid)
    report = run(h.records)
    assert kinds(report) == ["missing_bid"], report.render()


def test_overspend_of_a_root_token_shared_by_two_originators() -> None:
    people = {n: ident(n) for n in ("bank", "o1", "o2", "ex")}
    h = History()
    root = h.token(people["bank"], people["o1"], 10_000)
    child1 = h.token(people["bank"], people["o1"], 6_000, parent=root)
    child2 = h.token(people["bank"], people["o2"], 6_000, parent=root)
    for _ in range(5):
        h.job(people["o1"], people["ex"], price=1000, budget=child1)  # 5000 <= 6000
        h.job(people["o2"], people["ex"], price=1200, budget=child2)  # 6000 <= 6000
    report = run(h.records)
    assert kinds(report) == ["overspend"], report.render()
    (f,) = report.findings
    assert f.cid == root.cid
    assert "11000" in f.message and "10000" in f.message
    assert people["o1"].did in f.message and people["o2"].did in f.message
    (usage,) = report.budgets
    assert (usage.spent, usage.cap, usage.settlements, usage.over) == (11_000, 10_000, 10, True)


def test_settlement_signed_by_someone_else() -> None:
    h, people = clean_history(2)
    j = h.job(people["orig-1"], people["ex-a"], settled_by=people["orig-2"])
    report = run(h.records)
    assert kinds(report) == ["settlement_not_by_originator"], report.render()
    (f,) = report.findings
    assert f.cid == j.receipt.cid
    assert people["orig-2"].did in f.message


def test_orphan_settlement_and_settlement_paying_more() -> None:
    h, people = clean_history(1)
    j = h.job(people["orig-1"], people["ex-a"])
    h.remove(j.receipt)
    h.heads.pop(people["ex-a"].did)
    report = run(h.records)
    assert kinds(report) == ["orphan_settlement"], report.render()

    h2, people = clean_history(1)
    k = h2.job(people["orig-1"], people["ex-a"], settle=False)
    pay = Settlement(
        signer=people["orig-1"].did,
        ts=T0,
        receipt=k.receipt.cid,
        job=k.bid.body["job"],
        executor=people["ex-a"].did,
        verified=True,
        observed_us=10,
        charge=5000,
    ).sign(people["orig-1"])
    h2.add(pay)
    assert kinds(run(h2.records)) == ["settlement_charge_mismatch"]


@pytest.mark.skipif(
    "assignment" not in Settlement.model_fields, reason="Settlement has no 'assignment' yet"
)
def test_settlement_of_another_assignment() -> None:
    h, people = clean_history(1)
    k = h.job(people["orig-1"], people["ex-a"], settle=False)
    body = {
        "ts": T0,
        "receipt": k.receipt.cid,
        "job": k.bid.body["job"],
        "executor": people["ex-a"].did,
        "verified": True,
        "observed_us": 10,
        "charge": 1000,
        "assignment": k.bid.cid,  # not the receipt's assignment
    }
    h.add(sign_envelope(people["orig-1"], "settlement", body))
    assert kinds(run(h.records)) == ["assignment_mismatch"]


def test_missing_token_and_unreadable_lines_and_wrong_subject() -> None:
    h, people = clean_history(1)
    h.envelopes = [e for e in h.envelopes if e.type != "token"]
    records = h.records
    records.append(Record("", b"", defect="line 9: not JSON"))
    records.append(Record(f"crank.{FED}.receipts.nobody", b"\x93garbage", 99, None))
    r0 = records[0]
    records[0] = Record(r0.subject.replace(".bids.", ".receipts."), r0.data, r0.seq, r0.msg_id)
    report = run(records)
    assert sorted(kinds(report)) == sorted(
        [
            "unreadable_record",
            "malformed_envelope",
            "wrong_subject",
            "missing_token",
            "missing_token",
        ]
    ), report.render()


def test_trusted_set_and_future_timestamps() -> None:
    h, people = clean_history(1)
    trusted = {p.did for n, p in people.items() if n != "ex-c"}
    report = run(h.records, trusted=trusted)
    assert set(kinds(report)) == {"untrusted_signer"}
    assert all(f.executor == people["ex-c"].did for f in report.findings)
    late = audit(h.records, now_ms=T0 - 3_600_000)
    assert set(kinds(late)) == {"future_timestamp"}


def test_partial_history_is_a_note_not_a_finding() -> None:
    h, people = clean_history(4)
    a = people["ex-a"].did
    early = [e for e in h.envelopes if e.type == "receipt" and e.signer == a][:2]
    h.remove(*early)
    h.envelopes = [
        e
        for e in h.envelopes
        if not (e.type == "settlement" and e.body["receipt"] in {x.cid for x in early})
    ]
    report = run(h.records)
    assert report.ok, report.render()
    assert report.executors[a].first_seq == 3
    assert any("starts at receipt seq 3" in n for n in report.notes)


def test_slo_figures_and_render() -> None:
    """Service-time compliance judges the promise against observed − overhead (never below
    the meter); end-to-end compliance against what the originator observed."""
    h = History()
    o, fast, slow = ident("o"), ident("fast"), ident("slow")
    for i in range(20):
        # a 300 µs service promised at p95 500 µs, observed at ~3 ms through the network
        h.job(o, fast, p95_us=500, wall_us=300, observed_us=3000 + 10 * i, overhead_us=3100)
        h.job(
            o,
            slow,
            p95_us=5000,
            wall_us=40_000 + i,
            observed_us=42_000 + i,
            overhead_us=2_000,
            status="ok" if i % 4 else "error",
        )
    report = run(h.records)
    assert report.ok
    f, s = report.executors[fast.did], report.executors[slow.did]
    assert f.slo_compliance == 1.0 and f.observed_p95_us == 3180 and f.service_p95_us == 300
    assert f.slo_compliance_e2e == 0.0
    assert s.slo_compliance == 0.0 and s.slo_compliance_e2e == 0.0 and s.success_rate == 0.75
    assert s.to_dict()["slo_compliance_e2e"] == 0.0 and s.to_dict()["service_p95_us"] == 40_018
    text = report.render()
    assert "crankmesh audit: 120 records (40 bids, 40 receipts, 40 settlements): OK" in text
    assert "promised p95" in text and "observed p95" in text and "service p95" in text
    assert "SLO met (service)" in text and "SLO met (end to end)" in text
    assert "75.0%" in text and "42.02 ms" in text


def test_service_time_is_observed_minus_overhead_when_the_meter_says_less() -> None:
    """An executor that under-reports its meter is still judged by what was observed
    less the originator's overhead estimate recorded in the settlement."""
    h = History()
    o, liar = ident("o"), ident("liar")
    for i in range(10):
        h.job(o, liar, p95_us=1000, wall_us=100, observed_us=12_000 + i, overhead_us=2_000)
    report = run(h.records)
    s = report.executors[liar.did]
    assert s.slo_compliance == 0.0 and s.service_p95_us == 10_009


def test_settlement_without_overhead_judges_by_the_meter() -> None:
    h = History()
    o, old = ident("o"), ident("old")
    for i in range(10):
        h.job(o, old, p95_us=1000, wall_us=900 if i else 5000, observed_us=4000)
    s = run(h.records).executors[old.did]
    assert s.slo_met == 9 and s.slo_met_e2e == 0


def test_p95_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([7]) == 7
    assert p95(range(1, 101)) == 95
    assert p95(range(1, 21)) == 19


def test_every_finding_kind_is_specified_in_rfc_0002() -> None:
    text = RFC.read_text(encoding="utf-8")
    for kind in FINDING_KINDS:
        assert re.search(rf"`{kind}`", text), f"RFC 0002 does not specify {kind!r}"


def test_a_huge_signed_seq_is_one_gap_not_a_hang() -> None:
    h, people = clean_history(2)
    h.job(people["orig-1"], people["ex-a"], seq=2**63 - 1)
    report = run(h.records)
    assert kinds(report) == ["gap"], report.render()
    assert f"seqs 3..{2**63 - 2}" in report.findings[0].message


def test_gap_next_to_a_tampered_receipt_is_not_reported_twice() -> None:
    h, people = clean_history(1)
    a, orig = people["ex-a"], people["orig-1"]
    victim = h.job(orig, a)
    h.job(orig, a)
    records = h.records
    i = next(i for i, r in enumerate(records) if r.data == victim.receipt.raw)
    r = records[i]
    records[i] = Record(r.subject, b"\x00" + r.data[1:], r.seq, r.msg_id)  # undecodable
    report = run(records)
    assert kinds(report) == ["malformed_envelope"], report.render()
