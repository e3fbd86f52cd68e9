"""NATS subject names: builders, parsing, and federation names."""

from __future__ import annotations

import pytest

from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_document
from crankmesh.protocol.errors import InvalidDID
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.subjects import SubjectInfo, check_federation, parse_subject

FED = "lab-1"
EXECUTOR = Identity.from_seed(bytes(32))
NODE = EXECUTOR.node_id
JOB = cid_for_document(b"job")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (
            subjects.announce(FED, "text.summarize"),
            SubjectInfo("announce", FED, capability="text.summarize"),
        ),
        (subjects.announce(FED, "gpu"), SubjectInfo("announce", FED, capability="gpu")),
        (subjects.bids(FED, JOB), SubjectInfo("bids", FED, job_cid=JOB)),
        (
            subjects.assignment(FED, JOB, EXECUTOR.did),
            SubjectInfo("assignment", FED, job_cid=JOB, node_id=NODE),
        ),
        (subjects.receipt_delivery(FED, JOB), SubjectInfo("receipt", FED, job_cid=JOB)),
        (subjects.closed(FED, JOB), SubjectInfo("closed", FED, job_cid=JOB)),
        (subjects.receipts(FED, EXECUTOR.did), SubjectInfo("receipts", FED, node_id=NODE)),
        (subjects.settlements(FED, EXECUTOR.did), SubjectInfo("settlements", FED, node_id=NODE)),
        (subjects.adverts(FED), SubjectInfo("adverts", FED)),
        (
            subjects.node_announce(FED, EXECUTOR.did),
            SubjectInfo("node_announce", FED, node_id=NODE),
        ),
    ],
)
def test_build_and_parse(subject: str, expected: SubjectInfo) -> None:
    assert subject.startswith(f"crank.{FED}.")
    assert parse_subject(subject) == expected


def test_exact_names() -> None:
    assert subjects.announce(FED, "a.b.c") == "crank.lab-1.jobs.announce.a.b.c"
    assert subjects.bids(FED, JOB) == f"crank.lab-1.jobs.{JOB}.bids"
    assert (
        subjects.assignment(FED, JOB, EXECUTOR.did) == f"crank.lab-1.jobs.{JOB}.assignment.{NODE}"
    )
    assert subjects.receipt_delivery(FED, JOB) == f"crank.lab-1.jobs.{JOB}.receipt"
    assert subjects.closed(FED, JOB) == f"crank.lab-1.jobs.{JOB}.closed"
    assert subjects.receipts(FED, EXECUTOR.did) == f"crank.lab-1.receipts.{NODE}"
    assert subjects.settlements(FED, EXECUTOR.did) == f"crank.lab-1.settlements.{NODE}"
    assert subjects.adverts(FED) == "crank.lab-1.nodes.adverts"
    assert subjects.advert_sync(FED) == "crank.lab-1.nodes.sync"
    assert parse_subject(subjects.advert_sync(FED)).kind == "sync"
    assert subjects.node_announce(FED, EXECUTOR.did) == f"crank.lab-1.nodes.{NODE}.announce"
    assert subjects.directory_bucket(FED) == "crank_lab-1_directory"


def test_wildcard_subscriptions() -> None:
    assert subjects.announce_all(FED) == "crank.lab-1.jobs.announce.>"
    assert subjects.assignments_for(FED, EXECUTOR.did) == f"crank.lab-1.jobs.*.assignment.{NODE}"
    assert subjects.closed_all(FED) == "crank.lab-1.jobs.*.closed"
    assert subjects.receipts_all(FED) == "crank.lab-1.receipts.*"
    assert subjects.settlements_all(FED) == "crank.lab-1.settlements.*"


def test_multi_token_capability_in_announce() -> None:
    subject = subjects.announce(FED, "ml.image.classify-v2")
    assert subject.split(".")[4:] == ["ml", "image", "classify-v2"]
    assert parse_subject(subject).capability == "ml.image.classify-v2"


def test_executor_subjects_need_a_valid_did() -> None:
    with pytest.raises(InvalidDID):
        subjects.assignment(FED, JOB, "did:key:zbogus")
    with pytest.raises(InvalidDID):
        subjects.receipts(FED, NODE)  # a node id is not a DID


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "crank",
        "crank.lab-1",
        "crank.lab-1.jobs",
        "crank.lab-1.jobs.announce",
        "other.lab-1.jobs.announce.gpu",
        "CRANK.lab-1.jobs.announce.gpu",
        "crank.lab 1.jobs.announce.gpu",
        "crank.lab*.jobs.announce.gpu",
        "crank..jobs.announce.gpu",
        f"crank.lab-1.jobs.{JOB}",
        f"crank.lab-1.jobs.{JOB}.bid",
        f"crank.lab-1.jobs.{JOB}.bids.extra",
        f"crank.lab-1.jobs.{JOB}.assignment",
        f"crank.lab-1.jobs.{JOB}.assignment.{NODE}.extra",
        f"crank.lab-1.jobs.{JOB}.unknown",
        "crank.lab-1.receipts",
        f"crank.lab-1.receipts.{NODE}.extra",
        "crank.lab-1.settlements",
        "crank.lab-1.nodes.other",
        "crank.lab-1.nodes.adverts.extra",
        "crank.lab-1.nodes.sync.extra",
        "crank.lab-1.unknown.thing",
        "_INBOX.abc.def",
    ],
)
def test_foreign_subjects_are_rejected(subject: str) -> None:
    with pytest.raises(ValueError):
        parse_subject(subject)


@pytest.mark.parametrize("name", ["lab", "lab-1", "Lab_2", "a", "x" * 64, "0"])
def test_good_federation_names(name: str) -> None:
    assert check_federation(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a.b",
        "lab.",
        "*",
        ">",
        "lab*",
        "lab>",
        "my lab",
        "lab\t",
        "lab\n",
        "x" * 65,
        "läb",
        "a/b",
    ],
)
def test_bad_federation_names(name: str) -> None:
    with pytest.raises(ValueError):
        check_federation(name)
