"""ML capabilities an executor can serve in-process, with what self-benchmarking needs.

``email.classify.spam-v1`` (:class:`SpamClassifierCapability`): the example capability of
seed 000 §3, for real.  A binarised multinomial naive Bayes model (Laplace smoothing) in
pure Python, trained on first use from the labelled set shipped in
``crankmesh/executor/data/spam_v1.json`` (``train`` split).  Payload: UTF-8 text (at most
64 KiB).  Result: JSON ``{"label": "spam"|"ham", "score_ppm": <P(spam) in ppm>}`` (compact,
sorted keys).  Deterministic: same text, same bytes, on every executor.  It also exposes the
held-out ``test`` split as :meth:`~SpamClassifierCapability.labelled_set` and
:meth:`~SpamClassifierCapability.score`, so :func:`crankmesh.executor.benchmark.calibrate`
measures its accuracy and bids can quote ``accuracy_ppm``.

``tensor.matmul`` (:class:`TensorMatmulCapability`, needs torch): ``C = A @ B`` on the CPU or
on a CUDA / MPS device as the job's ``constraints.accelerator`` says.  Payload and result are
msgpack maps ``{"dtype": "float32", "shape": [rows, cols], "data": <little-endian bytes>}``
(the payload has two: ``{"a": ..., "b": ...}``).  Runs in a worker thread.
"""

from __future__ import annotations

import array
import functools
import importlib.resources
import importlib.util
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio.to_thread
import msgpack

from ..protocol.messages import JobSpec
from .handlers import Outcome

__all__ = [
    "LabelledExample",
    "SpamClassifierCapability",
    "SpamModel",
    "TensorMatmulCapability",
    "decode_matrix",
    "default_spam_model",
    "encode_matmul_payload",
    "encode_matrix",
    "load_spam_dataset",
]

SPAM_CAPABILITY: Final = "email.classify.spam-v1"
MATMUL_CAPABILITY: Final = "tensor.matmul"
MAX_TEXT_BYTES: Final = 64 * 1024
_TOKEN_RE: Final = re.compile(r"[a-z][a-z']*|\$|!|[0-9]+")
_LABELS: Final = ("ham", "spam")


@dataclass(frozen=True, slots=True)
class LabelledExample:
    text: str
    label: str  # "spam" or "ham"


def load_spam_dataset() -> tuple[tuple[LabelledExample, ...], tuple[LabelledExample, ...]]:
    """The shipped labelled set: ``(train, test)``."""
    raw = (
        importlib.resources.files("crankmesh.executor")
        .joinpath("data", "spam_v1.json")
        .read_text(encoding="utf-8")
    )
    doc = json.loads(raw)

    def split(name: str) -> tuple[LabelledExample, ...]:
        rows = doc[name]
        out = tuple(LabelledExample(str(r["text"]), str(r["label"])) for r in rows)
        bad = [e.label for e in out if e.label not in _LABELS]
        if bad:
            raise ValueError(f"spam_v1.json {name!r} has unknown labels {sorted(set(bad))}")
        return out

    return split("train"), split("test")


def tokens(text: str) -> list[str]:
    """The model's features: lower-case words, ``$``, ``!`` and numbers (as ``<num>``)."""
    out = []
    for tok in _TOKEN_RE.findall(text.lower()):
        out.append("<num>" if tok[0].isdigit() else tok)
    return out


class SpamModel:
    """Binarised multinomial naive Bayes over :func:`tokens`, two classes (spam, ham)."""

    __slots__ = ("_log_prior_odds", "_log_ratio", "_unseen_ratio", "vocabulary_size")

    def __init__(
        self, log_prior_odds: float, log_ratio: dict[str, float], unseen_ratio: float
    ) -> None:
        self._log_prior_odds = log_prior_odds
        self._log_ratio = log_ratio
        self._unseen_ratio = unseen_ratio
        self.vocabulary_size = len(log_ratio)

    @classmethod
    def train(cls, examples: Iterable[LabelledExample], *, smoothing: float = 1.0) -> SpamModel:
        docs = {"spam": 0, "ham": 0}
        counts: dict[str, dict[str, int]] = {"spam": {}, "ham": {}}
        for ex in examples:
            docs[ex.label] += 1
            bag = counts[ex.label]
            for tok in set(tokens(ex.text)):
                bag[tok] = bag.get(tok, 0) + 1
        if not docs["spam"] or not docs["ham"]:
            raise ValueError("training needs examples of both spam and ham")
        vocab = sorted(counts["spam"].keys() | counts["ham"].keys())
        totals = {c: sum(counts[c].values()) + smoothing * (len(vocab) + 1) for c in counts}

        def log_p(c: str, n: int) -> float:
            return math.log((n + smoothing) / totals[c])

        ratio = {
            t: log_p("spam", counts["spam"].get(t, 0)) - log_p("ham", counts["ham"].get(t, 0))
            for t in vocab
        }
        return cls(math.log(docs["spam"] / docs["ham"]), ratio, log_p("spam", 0) - log_p("ham", 0))

    def spam_probability(self, text: str) -> float:
        logit = self._log_prior_odds
        for tok in sorted(set(tokens(text))):  # fixed order: bit-identical sums everywhere
            logit += self._log_ratio.get(tok, self._unseen_ratio)
        if logit >= 0:
            return 1.0 / (1.0 + math.exp(-logit))
        e = math.exp(logit)
        return e / (1.0 + e)

    def classify(self, text: str) -> tuple[str, int]:
        """``(label, score_ppm)`` where ``score_ppm`` is P(spam) in parts per million."""
        score = min(1_000_000, max(0, round(self.spam_probability(text) * 1_000_000)))
        return ("spam" if score >= 500_000 else "ham"), score


@functools.cache
def default_spam_model() -> SpamModel:
    """The model trained on the shipped ``train`` split (cached)."""
    train, _ = load_spam_dataset()
    return SpamModel.train(train)


def _encode_result(label: str, score_ppm: int) -> bytes:
    return json.dumps(
        {"label": label, "score_ppm": score_ppm}, separators=(",", ":"), sort_keys=True
    ).encode()


class SpamClassifierCapability:
    """``email.classify.spam-v1``: in-process spam/ham classification (see module docstring)."""

    name = SPAM_CAPABILITY

    def __init__(self, model: SpamModel | None = None) -> None:
        self.model = model if model is not None else default_spam_model()

    def check(self, job: JobSpec) -> str | None:
        if job.payload_size > MAX_TEXT_BYTES:
            return "payload_too_large"
        if job.constraints.accelerator not in (None, "cpu"):
            return "no_accelerator"  # a CPU model; a GPU job is someone else's
        return None

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        start = time.perf_counter_ns()
        cpu0 = time.thread_time_ns()
        if len(payload) > MAX_TEXT_BYTES:
            return Outcome("invalid_input", None, f"text longer than {MAX_TEXT_BYTES} bytes")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Outcome("invalid_input", None, f"payload is not UTF-8: {exc}")
        label, score = self.model.classify(text)
        return Outcome(
            "ok",
            _encode_result(label, score),
            wall_us=(time.perf_counter_ns() - start) // 1000,
            cpu_us=(time.thread_time_ns() - cpu0) // 1000,
        )

    # ------------------------------------------------------------------ benchmark hooks

    def labelled_set(self) -> Sequence[tuple[bytes, str]]:
        """The held-out examples ``(payload, label)``, never used for training."""
        _, test = load_spam_dataset()
        return tuple((ex.text.encode("utf-8"), ex.label) for ex in test)

    def score(self, outputs: Sequence[bytes | None], labels: Sequence[str]) -> int:
        """Accuracy in ppm: the share of ``outputs`` whose ``label`` equals the expected one.

        A missing or malformed output counts as wrong.
        """
        if len(outputs) != len(labels):
            raise ValueError(f"{len(outputs)} outputs for {len(labels)} labels")
        if not labels:
            raise ValueError("cannot score an empty labelled set")
        right = 0
        for out, want in zip(outputs, labels, strict=True):
            if out is None:
                continue
            try:
                got = json.loads(out).get("label")
            except (ValueError, AttributeError):
                continue
            right += got == want
        return right * 1_000_000 // len(labels)


# --------------------------------------------------------------------------- tensor.matmul

MAX_MATRIX_DIM: Final = 4096
MAX_MATRIX_ELEMENTS: Final = 4 * 1024 * 1024
_GPU_ACCELERATORS: Final = ("gpu", "cuda", "rocm", "mps")


def encode_matrix(rows: int, cols: int, data: bytes) -> dict[str, Any]:
    """A float32 row-major matrix as the msgpack map ``tensor.matmul`` reads and writes."""
    if len(data) != rows * cols * 4:
        raise ValueError(f"{rows}x{cols} float32 needs {rows * cols * 4} bytes, got {len(data)}")
    return {"data": data, "dtype": "float32", "shape": [rows, cols]}


def encode_matmul_payload(a: dict[str, Any], b: dict[str, Any]) -> bytes:
    """The payload of a ``tensor.matmul`` job (matrices from :func:`encode_matrix`)."""
    return msgpack.packb({"a": a, "b": b}, use_bin_type=True)  # type: ignore[no-any-return]


def decode_matrix(doc: object, name: str = "matrix") -> tuple[int, int, bytes]:
    """``(rows, cols, data)`` of a float32 matrix map; :class:`ValueError` when malformed."""
    if not isinstance(doc, dict):
        raise ValueError(f"{name} must be a map")
    shape, data = doc.get("shape"), doc.get("data")
    if doc.get("dtype") != "float32":
        raise ValueError(f"{name}: only dtype 'float32' is supported")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(type(d) is int and 1 <= d <= MAX_MATRIX_DIM for d in shape)
    ):
        raise ValueError(f"{name}: shape must be [rows, cols], each in 1..{MAX_MATRIX_DIM}")
    rows, cols = shape
    if rows * cols > MAX_MATRIX_ELEMENTS:
        raise ValueError(f"{name}: more than {MAX_MATRIX_ELEMENTS} elements")
    if not isinstance(data, bytes) or len(data) != rows * cols * 4:
        raise ValueError(f"{name}: data must be {rows * cols * 4} bytes of float32")
    return rows, cols, data


def _tensor(torch: Any, matrix: tuple[int, int, bytes]) -> Any:
    rows, cols, data = matrix
    buf = bytearray(data)  # writable: torch warns about read-only buffers
    if sys.byteorder != "little":
        values = array.array("f")
        values.frombytes(data)
        values.byteswap()
        buf = bytearray(values.tobytes())
    return torch.frombuffer(buf, dtype=torch.float32).reshape(rows, cols)


def _tensor_bytes(tensor: Any) -> bytes:
    """Little-endian float32 bytes of a CPU tensor (numpy when available; it is optional)."""
    try:
        return bytes(tensor.numpy().astype("<f4", copy=False).tobytes())
    except (ImportError, RuntimeError):
        values = array.array("f", tensor.reshape(-1).tolist())
        if sys.byteorder != "little":
            values.byteswap()
        return values.tobytes()


class TensorMatmulCapability:
    """``tensor.matmul`` with torch, on the CPU or the job's accelerator (see module docstring).

    Construct only where :meth:`available` is true; constructing imports torch (seconds).
    """

    name = MATMUL_CAPABILITY

    def __init__(self) -> None:
        import torch

        self._torch: Any = torch
        self._cuda = bool(torch.cuda.is_available())
        mps = getattr(torch.backends, "mps", None)
        self._mps = bool(mps is not None and mps.is_available())

    @staticmethod
    def available() -> bool:
        """Whether torch is installed (without importing it)."""
        return importlib.util.find_spec("torch") is not None

    @property
    def accelerators(self) -> tuple[str, ...]:
        return (("cuda",) if self._cuda else ()) + (("mps",) if self._mps else ())

    def _device(self, accelerator: str | None) -> str | None:
        if accelerator in (None, "cpu"):
            return "cpu"
        if accelerator in ("gpu", "cuda", "rocm") and self._cuda:
            return "cuda"
        if accelerator in ("gpu", "mps") and self._mps:
            return "mps"
        return None

    def check(self, job: JobSpec) -> str | None:
        if self._device(job.constraints.accelerator) is None:
            return "no_accelerator"
        return None

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        start = time.perf_counter_ns()
        device = self._device(job.constraints.accelerator)
        if device is None:
            return Outcome("error", None, f"no {job.constraints.accelerator} device")
        try:
            doc = msgpack.unpackb(payload, raw=False, max_ext_len=0)
            if not isinstance(doc, dict):
                raise ValueError("payload must be a map with 'a' and 'b'")
            a = decode_matrix(doc.get("a"), "a")
            b = decode_matrix(doc.get("b"), "b")
            if a[1] != b[0]:
                raise ValueError(f"cannot multiply {a[0]}x{a[1]} by {b[0]}x{b[1]}")
        except Exception as exc:
            return Outcome("invalid_input", None, str(exc)[:1000])

        def run() -> tuple[bytes, int]:
            cpu0 = time.thread_time_ns()
            torch = self._torch
            ta = _tensor(torch, a)
            tb = _tensor(torch, b)
            out = (ta.to(device) @ tb.to(device)).to("cpu").contiguous()
            return _tensor_bytes(out), (time.thread_time_ns() - cpu0) // 1000

        try:
            with anyio.fail_after(job.constraints.timeout_ms / 1000):
                data, cpu_us = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        except TimeoutError:
            return Outcome(
                "timeout",
                None,
                f"exceeded {job.constraints.timeout_ms} ms",
                wall_us=(time.perf_counter_ns() - start) // 1000,
            )
        except Exception as exc:  # device errors (out of memory, lost device)
            return Outcome("error", None, f"{type(exc).__name__}: {exc}"[:1000])
        result = msgpack.packb(encode_matrix(a[0], b[1], data), use_bin_type=True)
        if len(result) > job.constraints.max_output_bytes:
            return Outcome("output_limit", None, f"result of {len(result)} bytes exceeds the limit")
        return Outcome(
            "ok", result, wall_us=(time.perf_counter_ns() - start) // 1000, cpu_us=cpu_us
        )
