from __future__ import annotations

import json
import re
import struct
from typing import Any

import msgpack
import pytest

from crankmesh.executor.benchmark import (
    calibrate,
    job_factory_for,
    matmul_job_factory,
    synthetic_job,
)
from crankmesh.executor.handlers import CapabilityHandler
from crankmesh.executor.ml_capabilities import (
    SpamClassifierCapability,
    SpamModel,
    TensorMatmulCapability,
    decode_matrix,
    encode_matmul_payload,
    encode_matrix,
    load_spam_dataset,
)
from crankmesh.protocol.messages import CAPABILITY_RE, Constraints

pytestmark = pytest.mark.anyio


def result(outcome: Any) -> dict[str, Any]:
    assert outcome.status == "ok", outcome.detail
    doc: dict[str, Any] = json.loads(outcome.result)
    return doc


def test_dataset_is_shipped_balanced_and_held_out() -> None:
    train, test = load_spam_dataset()
    assert 100 <= len(train) + len(test) <= 250
    for split in (train, test):
        labels = [e.label for e in split]
        assert labels.count("spam") == labels.count("ham")
    assert not {e.text for e in train} & {e.text for e in test}


def test_capability_name_is_a_valid_subject_token() -> None:
    assert CAPABILITY_RE.match(SpamClassifierCapability.name)
    assert re.fullmatch(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$", "email.classify.spam-v1")
    handler: CapabilityHandler = SpamClassifierCapability()
    assert handler.name == "email.classify.spam-v1"


async def test_classifies_spam_and_ham() -> None:
    cap = SpamClassifierCapability()
    spam_text = b"URGENT! You won a FREE prize, click here to claim your $1000 gift card now"
    ham_text = b"Can we move tomorrow's design review to 3pm? The slides are in the shared folder"
    spam = result(await cap.execute(*synthetic_job(cap.name, spam_text)))
    ham = result(await cap.execute(*synthetic_job(cap.name, ham_text)))
    assert spam["label"] == "spam" and spam["score_ppm"] > 900_000
    assert ham["label"] == "ham" and ham["score_ppm"] < 100_000
    assert set(spam) == {"label", "score_ppm"} and isinstance(spam["score_ppm"], int)


async def test_results_are_deterministic_bytes() -> None:
    text = b"Limited offer: cheap meds, buy now"
    a = await SpamClassifierCapability().execute(*synthetic_job("email.classify.spam-v1", text))
    b = await SpamClassifierCapability(SpamModel.train(load_spam_dataset()[0])).execute(
        *synthetic_job("email.classify.spam-v1", text)
    )
    assert a.result == b.result
    assert a.result is not None and a.result.startswith(b'{"label":"spam","score_ppm":')


async def test_bad_input() -> None:
    cap = SpamClassifierCapability()
    out = await cap.execute(*synthetic_job(cap.name, b"\xff\xfe not utf-8"))
    assert out.status == "invalid_input"
    big, payload = synthetic_job(cap.name, b"a" * (64 * 1024 + 1))
    assert cap.check(big) == "payload_too_large"
    assert (await cap.execute(big, payload)).status == "invalid_input"
    gpu_job, _ = synthetic_job(cap.name, b"hi", constraints=Constraints(accelerator="cuda"))
    assert cap.check(gpu_job) == "no_accelerator"
    assert cap.check(synthetic_job(cap.name, b"hi")[0]) is None


def test_score() -> None:
    cap = SpamClassifierCapability()
    spam = b'{"label":"spam","score_ppm":990000}'
    ham = b'{"label":"ham","score_ppm":1000}'
    assert cap.score([spam, ham, None, b"garbage"], ["spam", "ham", "ham", "ham"]) == 500_000
    with pytest.raises(ValueError):
        cap.score([spam], ["spam", "ham"])


async def test_calibration_measures_accuracy_on_the_held_out_set() -> None:
    cap = SpamClassifierCapability()
    factory = job_factory_for(cap)
    assert factory is not None
    prof = await calibrate(cap, job_factory=factory, runs=20, min_level_s=0)
    assert prof.accuracy_ppm is not None and prof.accuracy_ppm >= 900_000
    assert prof.p50_us is not None and prof.p50_us < 5_000
    assert prof.to_bid_slo().accuracy_ppm == prof.accuracy_ppm


def test_training_needs_both_classes() -> None:
    train, _ = load_spam_dataset()
    with pytest.raises(ValueError):
        SpamModel.train([e for e in train if e.label == "spam"])


# --------------------------------------------------------------------------- tensor.matmul


def matrix(rows: int, cols: int, values: list[float]) -> dict[str, Any]:
    return encode_matrix(rows, cols, struct.pack(f"<{rows * cols}f", *values))


def test_matrix_encoding_is_checked() -> None:
    assert decode_matrix(matrix(1, 2, [1.0, 2.0]))[:2] == (1, 2)
    with pytest.raises(ValueError):
        encode_matrix(2, 2, b"\x00" * 4)
    for bad in (
        {"dtype": "float64", "shape": [1, 1], "data": b"\x00" * 8},
        {"dtype": "float32", "shape": [1], "data": b"\x00" * 4},
        {"dtype": "float32", "shape": [1, 1], "data": b"\x00" * 5},
        {"dtype": "float32", "shape": [0, 1], "data": b""},
        "not a map",
    ):
        with pytest.raises(ValueError):
            decode_matrix(bad)


@pytest.mark.ml
async def test_matmul_on_cpu() -> None:
    pytest.importorskip("torch")
    cap = TensorMatmulCapability()
    payload = encode_matmul_payload(
        matrix(2, 3, [1, 2, 3, 4, 5, 6]), matrix(3, 2, [7, 8, 9, 10, 11, 12])
    )
    out = await cap.execute(*synthetic_job("tensor.matmul", payload))
    assert out.status == "ok", out.detail
    assert out.result is not None
    doc = msgpack.unpackb(out.result)
    rows, cols, data = decode_matrix(doc)
    assert (rows, cols) == (2, 2)
    assert struct.unpack("<4f", data) == (58.0, 64.0, 139.0, 154.0)
    bad = encode_matmul_payload(matrix(1, 2, [1, 2]), matrix(3, 1, [1, 2, 3]))
    assert (await cap.execute(*synthetic_job("tensor.matmul", bad))).status == "invalid_input"
    if not cap.accelerators:
        job, _ = synthetic_job(
            "tensor.matmul", payload, constraints=Constraints(accelerator="cuda")
        )
        assert cap.check(job) == "no_accelerator"


@pytest.mark.ml
async def test_matmul_calibrates() -> None:
    pytest.importorskip("torch")
    prof = await calibrate(
        TensorMatmulCapability(),
        job_factory=matmul_job_factory(32),
        runs=5,
        concurrency=(1,),
        min_level_s=0,
    )
    assert prof.samples == 5 and prof.failed == 0


@pytest.mark.gpu
@pytest.mark.ml
async def test_matmul_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    cap = TensorMatmulCapability()
    assert "cuda" in cap.accelerators
    factory = matmul_job_factory(256, accelerator="cuda")
    job, payload = factory()
    assert cap.check(job) is None
    out = await cap.execute(job, payload)
    assert out.status == "ok", out.detail
    cpu_out = await cap.execute(*matmul_job_factory(256)())
    assert cpu_out.result is not None and out.result is not None
    gpu_vals = struct.unpack(f"<{256 * 256}f", decode_matrix(msgpack.unpackb(out.result))[2])
    cpu_vals = struct.unpack(f"<{256 * 256}f", decode_matrix(msgpack.unpackb(cpu_out.result))[2])
    assert all(
        abs(g - c) <= 1e-2 * max(1.0, abs(c)) for g, c in zip(gpu_vals, cpu_vals, strict=True)
    )
    prof = await calibrate(cap, job_factory=factory, runs=5, concurrency=(1,), min_level_s=0)
    assert prof.gpu_us_per_job is not None and prof.gpu_us_per_job > 0
