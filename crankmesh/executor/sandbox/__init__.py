"""The FaaS Python sandbox behind the ``python.run`` capability.

Usage::

    async with Sandbox(profiles=("python-core",), max_concurrency=4) as sandbox:
        result = await sandbox.run(code="print(42)", limits=SandboxLimits(timeout_s=2))
        assert result.status is ExecStatus.OK and result.stdout == b"42\\n"

Job code contract
-----------------
- The code runs as a fresh ``__main__`` module (``__name__ == "__main__"``, tracebacks show
  the job's own lines as ``File "<job>"``) in a child forked from a warm interpreter of its
  env profile, so the profile's modules are already imported:
  ``python-core`` = a set of standard-library modules + ``pydantic`` + ``msgpack``;
  ``python-ml`` = those + ``numpy`` + ``torch`` (only if they import on this executor).
- Globals: ``args`` (the job's ``args`` mapping, decoded from msgpack) and ``device``
  (``"cpu"``, ``"cuda"`` or ``"mps"`` for ``python-ml``; always ``"cpu"`` for ``python-core``).
  An accelerator the executor does not have ends the job with status ``error`` and detail
  ``"no CUDA device"`` / ``"no MPS device"``.
- ``max_output_bytes`` caps stdout + return value + stderr *together*: more stdout kills
  the job (``output_limit``), a return value that does not fit beside stdout is
  ``output_limit`` too, and stderr keeps the last bytes of what the two leave (at most
  8 KiB). With a cap of 0 nothing of the job's output comes back.
- If the code leaves a global named ``result``, it is encoded with
  ``msgpack.packb(result, use_bin_type=True)`` into ``SandboxResult.return_value``; a value
  msgpack cannot encode gives status ``error`` with the reason in ``detail``.
- ``SystemExit`` is honoured like in ``python``: ``sys.exit()`` / ``sys.exit(0)`` is ``ok``,
  another code is ``error`` with that ``exit_code``. An uncaught exception is ``error``
  (traceback in ``stderr_tail``); ``MemoryError`` is ``memory_limit``.
- Non-daemon threads are joined and ``atexit`` handlers the job registered run at the end.
- Environment: ``PATH=/usr/bin:/bin``, ``HOME`` = ``TMPDIR`` = the private working directory
  (also the cwd; empty at start, removed after the job), ``LANG=C.UTF-8``,
  ``PYTHONHASHSEED=0`` (deterministic ``str`` hashing, also in the job itself, so results
  are reproducible across executors), ``OMP/MKL/OPENBLAS_NUM_THREADS=1``. Nothing else.
- Limits (:class:`SandboxLimits`): wall-clock ``timeout_s`` (``timeout``), ``RLIMIT_CPU``
  (``killed``, "cpu time limit"), ``RLIMIT_AS`` = warm interpreter + ``memory_mb``
  (``memory_limit``), ``RLIMIT_NPROC`` (fork fails with ``EAGAIN``), ``RLIMIT_FSIZE``
  (``OSError(EFBIG)``: ``error``, "file size limit"), ``RLIMIT_NOFILE`` 1024, no core dumps.
  rlimits bind each process; every 100 ms the fork-server also measures the job's whole
  process tree and directory: all processes together beyond ``memory_mb`` (over their warm
  copies) is ``memory_limit``, beyond ``cpu_seconds`` of CPU is ``killed``, a directory
  over ``max_disk_bytes`` / ``max_files`` is ``killed`` ("disk quota ... exceeded").
  Where the job directory is a ``tmpfs`` of the sandbox's quota (``STRICT``, and below it
  where ``isolation.features["job_tmpfs"]``), a write past it fails with ``ENOSPC``.
- Nothing of a job survives it: when its main process ends (or is killed), every process
  it started is killed and reaped before :meth:`Sandbox.run` returns, and its files are
  removed.

Isolation (:func:`detect_isolation` says what the host allows, honestly, by trying it):
see :class:`IsolationLevel`. From ``BASIC`` up, each job confines itself with Landlock and
a seccomp filter (``_confine``), and the sandbox proves at start, with a real job, that
its node is out of reach (``protects_node``).

At ``STRICT`` (root on Linux) each job runs as a per-slot uid
(61000+) with no supplementary groups and ``no_new_privs``, as pid 2 of its own pid
namespace, in its own network namespace (no interface up: no network at all, not even
loopback), IPC/UTS namespaces, and a mount namespace with a private ``/proc`` and fresh
``tmpfs`` on ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``. All namespaces are
created while the slot is idle (pre-forked), so they cost a job no latency.

GPU jobs (``python-ml`` + ``cuda``): the fork-server imports torch but never touches CUDA
(it checks ``torch.cuda.is_initialized()`` is false), so each forked job initialises CUDA
itself; ``RLIMIT_AS`` is not applied to them (the CUDA driver reserves huge virtual ranges).
"""

from __future__ import annotations

from crankmesh.protocol.errors import SandboxError

from ._isolation import detect_isolation, make_undumpable
from ._sandbox import Sandbox
from ._types import ExecStatus, IsolationLevel, IsolationReport, SandboxLimits, SandboxResult

__all__ = [
    "ExecStatus",
    "IsolationLevel",
    "IsolationReport",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "detect_isolation",
    "make_undumpable",
]
