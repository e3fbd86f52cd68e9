"""Every command and code block in README.md, docs/getting-started.md, docs/operating.md and
docs/sdk.md runs as written (like ``examples/``), or is listed in :data:`NOT_RUN` with the
reason.

Blocks are taken from the Markdown files themselves.  What a reader fills in is filled in
the same way, and only that: the NATS URL a node's ready line prints (the docs say to use
it; ``nats://127.0.0.1:PORT`` and the sample ``nats://127.0.0.1:46015``), the server the
Python examples assume on the default port (``nats://127.0.0.1:4222``: here a server on a
free port), ``JOB_CID`` (the job a previous command printed), and the paths ``/tmp/a``,
``/var/lib/crankmesh`` and ``~`` (a temporary directory).  ``crankmesh`` and
``.venv/bin/crankmesh`` are this checkout's CLI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crankmesh.testing import NatsServer

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/getting-started.md", "docs/operating.md", "docs/sdk.md")
FENCE = re.compile(r"^```([a-z]*)\s*$")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        """(file, first line): stable while others edit around the block."""
        return (self.doc, self.text.strip().splitlines()[0].strip() if self.text.strip() else "")


def blocks(doc: str) -> list[Block]:
    out, lang, start, buf = [], None, 0, []
    for n, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if lang is None and m:
            lang, start, buf = m.group(1), n, []
        elif lang is not None and line.strip() == "```":
            out.append(Block(doc, start, lang, "\n".join(buf) + "\n"))
            lang = None
        elif lang is not None:
            buf.append(line)
    return out


ALL = [b for doc in DOCS for b in blocks(doc)]

#: Blocks that are not run, and why.  Output samples are what commands print (the commands
#: are run); the rest would recurse into the suite or install software.
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "./scripts/demo.sh"): "creates a venv and pip-installs; `crankmesh demo` runs",
    ("README.md", "./scripts/test.sh"): "runs this whole suite (CI runs exactly it)",
    ("README.md", ".venv/bin/python scripts/bench.py"): "the benchmark: minutes of load",
    ("README.md", "crankmesh/protocol/      PURE: canonical msgpack, CIDs, did:key, signed "
     "envelopes, messages, subjects, errors"): "a file listing",
}  # fmt: skip
OUTPUT_LANGS = ("text", "json")  # printed output, shown after the command that prints it


def _is_output(b: Block) -> bool:
    return b.lang in OUTPUT_LANGS


# ----------------------------------------------------------------------------- runner


@dataclass
class Shell:
    """Runs the docs' shell lines one by one, as a reader in a terminal would."""

    tmp: Path
    env: dict[str, str]
    url: str | None = None  # from a ready line
    last_job: str | None = None
    background: list[subprocess.Popen[str]] = field(default_factory=list)

    @classmethod
    def make(cls, tmp: Path) -> Shell:
        bindir = tmp / ".venv" / "bin"
        bindir.mkdir(parents=True)
        shim = bindir / "crankmesh"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m crankmesh.cli "$@"\n')
        shim.chmod(0o755)
        home = tmp / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRANKMESH_")}
        env.update(
            HOME=str(home),
            PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            CRANKMESH_ENV="development",
        )
        return cls(tmp, env)

    def fill(self, line: str) -> str:
        line = line.replace("/var/lib/crankmesh", str(self.tmp / "var-lib-crankmesh"))
        line = line.replace("/tmp/a/", str(self.tmp / "a") + "/")
        if self.url is not None:
            line = line.replace("nats://127.0.0.1:PORT", self.url)
            line = line.replace("nats://127.0.0.1:46015", self.url)
        if self.last_job is not None:
            line = line.replace("JOB_CID", self.last_job)
        return line

    def run_block(self, block: Block) -> list[subprocess.CompletedProcess[str]]:
        done = []
        for raw in block.text.splitlines():
            line = self.fill(raw.strip())
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                self.env[name] = os.path.expandvars(value)  # $NATS in later lines
                continue
            if re.match(r"^(\.venv/bin/)?crankmesh node\b", line):
                self.start_node(line)
                continue
            r = subprocess.run(
                ["bash", "-c", line],
                cwd=self.tmp,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0, f"{block.doc}:{block.line}: {line}\n{r.stdout}\n{r.stderr}"
            assert "Traceback" not in r.stderr, r.stderr
            m = re.search(r"\[ok\] job (\S+)", r.stdout) or re.search(
                r'"job_cid": "([^"]+)"', r.stdout
            )
            if m:
                self.last_job = m.group(1)
            done.append(r)
        return done

    def start_node(self, line: str) -> dict:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line} --metrics-port 0 --log-level WARNING"],
            cwd=self.tmp,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.background.append(proc)
        assert proc.stdout is not None
        while True:  # other lines may come first (e.g. the jq-filtered log lines)
            ready_line = proc.stdout.readline()
            assert ready_line, f"{line}: {proc.communicate(timeout=30)[1]}"
            try:
                ready = json.loads(ready_line)
            except ValueError:
                continue
            if ready.get("event") == "ready":
                break
        self.url = self.url or ready["nats"]
        return ready

    def stop(self) -> list[int]:
        """Ctrl-C every node, last started first (the docs: stop node `a` last)."""
        codes = []
        for proc in reversed(self.background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert "Traceback" not in err, err
            codes.append(proc.returncode)
        self.background.clear()
        return codes


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    sh = Shell.make(tmp_path)
    try:
        yield sh
    finally:
        for proc in sh.background:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def _doc_blocks(doc: str, lang: str = "bash") -> list[Block]:
    return [b for b in ALL if b.doc == doc and b.lang == lang and b.key not in NOT_RUN]


# ----------------------------------------------------------------------------- tests


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    """A new block in these docs needs a runner here (or a reason in NOT_RUN)."""
    runnable = {"bash", "python", "toml", "yaml"}
    for b in ALL:
        if _is_output(b) or b.key in NOT_RUN:
            continue
        assert b.lang in runnable, f"{b.doc}:{b.line}: ```{b.lang} block has no runner"
    assert {k for k in NOT_RUN} <= {b.key for b in ALL}, "NOT_RUN names a block that is gone"


def test_readme_two_terminal_mesh(shell: Shell) -> None:
    (block,) = [b for b in _doc_blocks("README.md") if "crankmesh node" in b.text]
    (submit,) = shell.run_block(block)
    assert "42" in submit.stdout
    assert shell.stop() == [0]


def test_getting_started_install_demo_mesh_audit_and_stop(shell: Shell) -> None:
    bs = _doc_blocks("docs/getting-started.md")
    install = bs[0]
    assert "pip install -e ." in install.text
    # the venv and pip lines are what CI's own set-up does; the check line is run
    (version,) = shell.run_block(Block(install.doc, install.line, "bash", "crankmesh --version\n"))
    assert version.stdout.strip() == "crankmesh 0.1.0"
    results = {}
    for b in bs[1:]:
        results[b.line] = shell.run_block(b)
    outputs = "\n".join(r.stdout for rs in results.values() for r in rs)
    assert "6/6 jobs ended with a verified receipt" in outputs
    assert "42" in outputs and '"output": "hi"' in outputs
    assert "20 ok, 0 failed" in "\n".join(r.stderr for rs in results.values() for r in rs)
    assert "explained by" in outputs and "crankmesh audit:" in outputs
    # "Stopping": Ctrl-C, node `a` (with the embedded server) last; every node exits 0
    assert shell.stop() == [0, 0, 0]


def test_operating_identity_logs_and_toml(shell: Shell, tmp_path: Path) -> None:
    bs = _doc_blocks("docs/operating.md")
    (ident,) = [b for b in bs if "identity new" in b.text]
    new, show = shell.run_block(ident)
    assert new.stdout.startswith("did:key:") and json.loads(show.stdout)["did"]
    (logs,) = [b for b in bs if "--log-format json" in b.text]
    # a node started as written, its warnings and errors filtered through jq; then Ctrl-C
    shell.start_node(logs.text.strip())
    assert shell.stop() == [0]
    toml_block, *more_toml = _doc_blocks("docs/operating.md", "toml")
    for block in more_toml:  # the other examples (e.g. executor caps): valid settings as shown
        extra = tmp_path / f"extra-{block.line}.toml"
        extra.write_text(block.text)
        r = subprocess.run(
            ["bash", "-c", f"crankmesh node --config {extra} --print-config"],
            env=shell.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        for key, value in tomllib.loads(block.text).items():
            assert f"{key} = {value!r}".replace("'", '"') in r.stdout or str(value) in r.stdout
    doc = tomllib.loads(toml_block.text)
    conf = tmp_path / "etc" / "node.toml"
    conf.parent.mkdir()
    conf.write_text(toml_block.text)
    r = subprocess.run(
        ["bash", "-c", f"crankmesh node --config {conf} --print-config"],
        env=shell.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # every key is known (a typo would be exit 2); the problems are the missing files
    assert r.returncode == 1, r.stderr
    assert f'federation = "{doc["federation"]}"' in r.stdout or doc["federation"] in r.stdout
    yaml = pytest.importorskip("yaml")
    (prom,) = _doc_blocks("docs/operating.md", "yaml")
    assert yaml.safe_load(prom.text)["scrape_configs"][0]["job_name"] == "crankmesh"


@pytest.fixture(scope="module")
def python_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server and a node (echo, python.run) for the Python examples."""
    tmp = tmp_path_factory.mktemp("docs-py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRANKMESH_")}
    env.update(CRANKMESH_ENV="development", CRANKMESH_HOME=str(tmp), PYTHONPATH=str(ROOT))
    with NatsServer() as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crankmesh.cli", "node", "--nats", server.url,
             "--log-level", "WARNING", "--metrics-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline()
            yield server.url
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


PY_BLOCKS = [b for b in ALL if b.lang == "python" and b.key not in NOT_RUN]


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[f"{b.doc}:{b.line}" for b in PY_BLOCKS])
def test_python_block_runs(block: Block, python_mesh: str, tmp_path: Path) -> None:
    code = block.text.replace("nats://127.0.0.1:4222", python_mesh)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRANKMESH_")}
    env.update(PYTHONPATH=str(ROOT), CRANKMESH_HOME=str(tmp_path))
    script = tmp_path / "block.py"
    script.write_text(code)
    if "sleep_forever" in code:  # a service node: runs until Ctrl-C
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert first.startswith("selling text.upper as did:key:"), first
        return
    r = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert r.returncode == 0, f"{block.doc}:{block.line}\n{r.stdout}\n{r.stderr}"
