"""The receipt chain head log: append per receipt, compaction, recovery, no fork after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crankmesh.protocol.errors import KeystoreError
from crankmesh.receipts import chain as chain_mod
from crankmesh.receipts.chain import ChainHead


def _cid(i: int) -> str:
    return f"bafyreceipt{i:06d}"


def test_a_head_without_a_path_lives_in_memory_only() -> None:
    head = ChainHead()
    assert head.next_links() == (1, None)
    head.advance(1, _cid(1))
    assert head.next_links() == (2, _cid(1))
    head.close()


def test_each_receipt_appends_one_line_and_a_reload_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "receipt-chain.log"
    head = ChainHead(path)
    for i in range(1, 4):
        head.advance(i, _cid(i))
        lines = path.read_text().splitlines()
        assert len(lines) == i  # appended, not rewritten
        assert json.loads(lines[-1]) == {"seq": i, "cid": _cid(i)}
    head.close()
    again = ChainHead(path)
    assert again.next_links() == (4, _cid(3))
    # a load compacts the log to its head
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"seq": 3, "cid": _cid(3)}]


def test_the_chain_only_advances_by_one(tmp_path: Path) -> None:
    head = ChainHead(tmp_path / "h.log")
    with pytest.raises(ValueError, match="advance by one"):
        head.advance(2, _cid(2))
    assert not (tmp_path / "h.log").exists() or (tmp_path / "h.log").read_text() == ""


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "h.log"
    path.write_text(json.dumps({"seq": 1, "cid": _cid(1)}) + '\n{"seq":2,"ci')
    assert ChainHead(path).next_links() == (2, _cid(1))


@pytest.mark.parametrize(
    "text",
    [
        'not json\n{"seq":2,"cid":"x"}\n',
        '{"seq":1,"cid":"a"}\n{"seq":3,"cid":"c"}\n',  # a gap
        '{"seq":0,"cid":"a"}\n',
        '{"seq":1,"cid":7}\n',
        '{"cid":"a"}\n',
    ],
)
def test_a_corrupt_log_is_refused_rather_than_forking(tmp_path: Path, text: str) -> None:
    path = tmp_path / "h.log"
    path.write_text(text)
    with pytest.raises(KeystoreError, match="refusing to start"):
        ChainHead(path)


def test_a_legacy_json_head_is_migrated_once(tmp_path: Path) -> None:
    legacy = tmp_path / "receipt-chain.json"
    legacy.write_text(json.dumps({"seq": 41, "cid": _cid(41)}))
    head = ChainHead(tmp_path / "receipt-chain.log")
    assert head.next_links() == (42, _cid(41))
    assert not legacy.exists()
    head.advance(42, _cid(42))
    head.close()
    assert ChainHead(tmp_path / "receipt-chain.log").next_links() == (43, _cid(42))


def test_the_log_is_compacted_every_so_many_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chain_mod, "COMPACT_EVERY", 5)
    path = tmp_path / "h.log"
    head = ChainHead(path)
    for i in range(1, 13):
        head.advance(i, _cid(i))
        assert len(path.read_text().splitlines()) <= 6
    head.close()
    assert ChainHead(path).next_links() == (13, _cid(12))


_BURST = """
import sys
from crankmesh.receipts.chain import ChainHead
head = ChainHead(sys.argv[1])
seq, _ = head.next_links()
while True:
    head.advance(seq, "bafy%08d" % seq)
    sys.stdout.write("%d\\n" % seq)  # 'published' only after the head was written
    sys.stdout.flush()
    seq += 1
"""


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_mid_burst_and_restart_never_reuses_a_published_sequence_number(
    tmp_path: Path, round_: int
) -> None:
    path = tmp_path / "receipt-chain.log"
    published: list[int] = []
    for _ in range(3):  # three kill/restart cycles on the same log
        proc = subprocess.Popen(
            [sys.executable, "-c", _BURST, str(path)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert proc.stdout is not None
        first = os.read(proc.stdout.fileno(), 1 << 16)  # blocks until it has published
        time.sleep(0.05 + 0.03 * round_)
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)
        text = (first + rest).decode()
        seqs = [int(x) for x in text[: text.rfind("\n") + 1].split()]
        # continued above everything published before: a number may be skipped (killed
        # between the head write and the publish), never reused
        assert seqs and (not published or seqs[0] > published[-1])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        published += seqs
        head = ChainHead(path)
        # every sequence number a receipt could have been published with is behind the head
        assert head.seq >= published[-1]
        head.close()
    assert published == sorted(set(published))
