"""Selection errors name what the executors said (RFC 0001 §8.13)."""

from __future__ import annotations

import crankmesh
from crankmesh.protocol.errors import BidsDeclined, NoBids, NoCapacity, SelectionError

A = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
B = "did:key:z6MkfeRKhH6va8g6ntHjfpjo8BwsBC6SiyS5De2fNjSMR4Ht"


def test_no_capacity_without_answers_keeps_its_guess() -> None:
    exc = NoCapacity("bjob", "echo", [f"{A}: running 2, queued 8, capacity 2"], 650)
    assert exc.declines == {}
    assert "(full, rate-limiting this originator, or not trusting its key" in str(exc)
    assert "capacity 2" in str(exc)


def test_no_capacity_names_each_executors_reason() -> None:
    exc = NoCapacity(
        "bjob",
        "echo",
        [f"{A}: running 2, queued 8, capacity 2", f"{B}: running 0, queued 0, capacity 4"],
        650,
        {A: "full: running 2 + queued 8 + reserved 0 of capacity 10", B: "rate_limited"},
    )
    text = str(exc)
    assert "full, or rate-limiting" not in text
    assert f"{A}: full: running 2" in text and f"{B}: rate_limited" in text
    assert "last advertised load" in text and isinstance(exc, NoBids)


def test_bids_declined_lists_every_answer_and_is_a_no_bids() -> None:
    exc = BidsDeclined("bjob", "echo", {A: "over_price: price 5000 > max_price 100"})
    assert isinstance(exc, NoBids) and isinstance(exc, SelectionError)
    assert not isinstance(exc, NoCapacity)
    assert exc.declines == {A: "over_price: price 5000 > max_price 100"}
    assert "every executor that answered declined job bjob" in str(exc)
    assert f"{A}: over_price" in str(exc)
    assert crankmesh.BidsDeclined is BidsDeclined and "BidsDeclined" in crankmesh.__all__
    assert crankmesh.__all__ == sorted(crankmesh.__all__)
