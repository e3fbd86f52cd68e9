"""The pipeline DAG model: well-formedness, order, step CIDs, input binding (no I/O)."""

from __future__ import annotations

import json

import msgpack
import pytest

from crankmesh import Job, Pipeline
from crankmesh.executor.handlers import decode_python_payload
from crankmesh.originator._pipeline_dag import (
    PipelineDefinitionError,
    PipelineInputError,
    Step,
    bind_inputs,
    check_steps,
    fan_out_items,
    step_cid,
    step_value,
    topological_order,
)


def py(code: str = "pass") -> Job:
    return Job.python(code)


def test_unknown_input_duplicate_name_bad_name_and_cycles_are_refused() -> None:
    p = Pipeline()
    p.step("a", py())
    with pytest.raises(PipelineDefinitionError, match="'nope', which is no step"):
        p.step("b", py(), inputs=["nope"])
    with pytest.raises(PipelineDefinitionError, match="two steps are named 'a'"):
        p.step("a", py())
    with pytest.raises(PipelineDefinitionError, match="must start with a letter"):
        p.step("1x", py())
    with pytest.raises(PipelineDefinitionError, match="cycle: a -> b -> a"):
        check_steps(
            [Step(name="a", job=py(), inputs=("b",)), Step(name="b", job=py(), inputs=("a",))]
        )
    with pytest.raises(PipelineDefinitionError, match="at least one step"):
        check_steps([])


def test_a_non_python_step_takes_exactly_one_input() -> None:
    p = Pipeline().step("a", py()).step("b", py())
    with pytest.raises(PipelineDefinitionError, match="only python.run steps combine"):
        p.step("c", Job.echo(b""), inputs=["a", "b"])
    p.step("d", Job.echo(b""), inputs=["a"])  # one is fine


def test_topological_order_follows_dependencies_not_declaration() -> None:
    steps = [
        Step(name="last", job=py(), inputs=("mid",)),
        Step(name="mid", job=py(), each="first"),
        Step(name="first", job=py()),
    ]
    assert [s.name for s in topological_order(steps)] == ["first", "mid", "last"]


def test_step_cid_is_stable_for_identical_work_and_changes_with_any_part() -> None:
    a, b = Job.python("print(1)"), Job.python("print(1)")
    assert a.payload == b.payload and step_cid(a) == step_cid(b)
    assert step_cid(a) != step_cid(Job.python("print(2)"))
    assert step_cid(a) != step_cid(Job.python("print(1)", timeout_sec=3))
    assert step_cid(a) != step_cid(Job.python("print(1)", requirements={"memory_gb": 1}))
    assert step_cid(a).startswith("b")


def test_bind_inputs_puts_values_in_python_args_and_payloads_of_other_steps() -> None:
    s = Step(name="s", job=Job.python("x", {"k": 1}), inputs=("a", "b"))
    code, args = decode_python_payload(bind_inputs(s, {"a": [1, 2], "b": "t"}).payload)
    assert code == "x" and args == {"k": 1, "inputs": {"a": [1, 2], "b": "t"}}
    fan = Step(name="f", job=Job.python("x"), each="a")
    _, args = decode_python_payload(bind_inputs(fan, {}, item=7, fanned=True).payload)
    assert args["item"] == 7
    echo = Step(name="e", job=Job.echo(b""), inputs=("a",))
    assert bind_inputs(echo, {"a": "héllo"}).payload == "héllo".encode()
    assert bind_inputs(echo, {"a": b"\x00raw"}).payload == b"\x00raw"
    assert json.loads(bind_inputs(echo, {"a": {"z": 1}}).payload) == {"z": 1}
    each_echo = Step(name="e2", job=Job.echo(b""), each="a")
    assert bind_inputs(each_echo, {}, item="one", fanned=True).payload == b"one"


def test_fan_out_needs_a_list() -> None:
    s = Step(name="f", job=py(), each="a")
    assert fan_out_items(s, (1, 2)) == [1, 2]
    with pytest.raises(PipelineInputError, match="each='a' needs a list, got dict"):
        fan_out_items(s, {"x": 1})


def test_step_value_of_python_prefers_the_result_global_then_stdout() -> None:
    with_return = msgpack.packb({"stdout": b"out\n", "return": msgpack.packb([1, 2])})
    assert step_value("python.run", with_return) == [1, 2]
    plain = msgpack.packb({"stdout": b"out\n", "return": None})
    assert step_value("python.run", plain) == "out\n"
    assert step_value("echo", b"text") == "text"
    assert step_value("echo", b"\xff\xfe") == b"\xff\xfe"
    assert step_value("echo", None) is None


def test_pipeline_cid_changes_with_edges() -> None:
    a = Pipeline("p").step("x", py()).step("y", py(), inputs=["x"])
    b = Pipeline("p").step("x", py()).step("y", py())
    assert a.cid != b.cid
    assert a.cid == Pipeline("p").step("x", py()).step("y", py(), inputs=["x"]).cid
