"""Job builders validate their terms: no silent 1 ms timeouts, no raw Python errors."""

from __future__ import annotations

import math

import pytest

from crankmesh.originator import Job
from crankmesh.protocol.errors import CrankmeshError, InvalidJob
from crankmesh.protocol.messages import Constraints

BAD_SECONDS = [0, 0.0, -1, -0.001, math.nan, math.inf, -math.inf, 86_401, 1e300, True, "5", None]


@pytest.mark.parametrize("timeout", BAD_SECONDS)
@pytest.mark.parametrize(
    "build",
    [
        lambda t: Job.python("pass", timeout_sec=t),
        lambda t: Job.echo(b"x", timeout_sec=t),
        lambda t: Job.call("echo", b"x", timeout_sec=t),
    ],
    ids=["python", "echo", "call"],
)
def test_bad_timeouts_are_invalid_job_errors(build, timeout: object) -> None:
    with pytest.raises(InvalidJob) as info:
        build(timeout)
    err = info.value
    assert isinstance(err, CrankmeshError) and isinstance(err, ValueError)
    assert err.field == "timeout_sec" and "timeout_sec" in str(err)


def test_good_timeouts_round_up_to_whole_milliseconds() -> None:
    assert Job.python("pass", timeout_sec=2.5).constraints.timeout_ms == 2500
    assert Job.echo(b"x", timeout_sec=0.0001).constraints.timeout_ms == 1  # rounded up, > 0
    assert Job.call("echo", b"x", timeout_sec=86_400).constraints.timeout_ms == 86_400_000
    assert Job.echo(b"x", timeout_sec=1).constraints.timeout_ms == 1000


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": -5}, "memory_mb"),
        ({"memory_mb": 1 << 25}, "memory_mb"),
        ({"max_output_bytes": -1}, "max_output_bytes"),
        ({"max_output_bytes": (1 << 30) + 1}, "max_output_bytes"),
        ({"accelerator": "tpu"}, "accelerator"),
        ({"isolation": "extreme"}, "isolation"),
        ({"slo_p95_ms": math.nan}, "slo_p95_ms"),
        ({"slo_p99_ms": -1.0}, "slo_p99_ms"),
        ({"slo_p95_ms": math.inf}, "slo_p95_ms"),
    ],
)
def test_other_out_of_range_terms_name_their_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidJob, match=field) as info:
        Job.python("pass", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_slo_milliseconds_become_microseconds() -> None:
    slo = Job.python("pass", slo_p95_ms=1.5, slo_p99_ms=3).slo
    assert slo is not None and (slo.p95_us, slo.p99_us) == (1500, 3000)


@pytest.mark.parametrize("timeout_ms", [0, -1, 86_400_001])
def test_constraints_refuse_out_of_range_timeouts(timeout_ms: int) -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        Constraints(timeout_ms=timeout_ms)


@pytest.mark.parametrize("timeout_ms", [math.nan, math.inf, 1.5])
def test_constraints_refuse_non_integer_timeouts(timeout_ms: float) -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        Constraints(timeout_ms=timeout_ms)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-2"])
def test_cli_submit_with_a_bad_timeout_is_one_error_line_and_exit_2(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from crankmesh.cli import main

    with pytest.raises(SystemExit) as exit_:  # the CLI's parser refuses it: exit 2
        main(["submit", "--nats", "nats://127.0.0.1:1", "--code", "pass", "--timeout", timeout])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    # the CLI refuses it while parsing (argparse type); the Job builders' own check is above
    assert err.startswith("error:") and "--timeout" in err and err.count("\n") == 1, err
