"""The node: one identity, one NATS connection, an executor, an originator,
an advert heartbeat and a peer directory.

Resource handling: ``async with Node(...) as node`` connects (or uses the
connection passed in), starts the sandbox when ``python.run`` is offered, and
runs every loop in one task group; exit drains (stops bidding, waits for
accepted jobs up to ``drain_grace_s``, publishes their receipts) and closes
what it opened.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus

from ._config_checks import ConfigError, advert_timing_problems
from .capabilities import CapabilityOffer, IsolationLevel
from .directory import PeerDirectory, cancel_on_reconnect, reconnect_count
from .directory_kv import open_bucket
from .executor.agent import Executor, ExecutorConfig
from .executor.handlers import CapabilityHandler, EchoCapability, InProcessCapability
from .executor.hardware import HardwareMonitor
from .executor.results import ResultCache
from .executor.untrusted_code import AllowListedCapability
from .http import serve_http
from .keystore import lock_state_dir
from .observability import Metrics
from .originator.client import Client, ClientConfig
from .originator.explain_service import serve_explanations
from .protocol import subjects
from .protocol.errors import ClientStateError, SandboxError, TransportError
from .protocol.fencing import presence_margin_ms
from .protocol.identity import Identity, did_node_id
from .protocol.messages import PROTOCOL_REVISION, Advert, AdvertCapability
from .receipts.chain import ChainHead
from .receipts.reputation import ReputationBook
from .receipts.store import RecordStore
from .state_dir import check_state_dir
from .tables import REPUTATION_MEMORY, watch_tables
from .transport import unsubscribe_quietly
from .verification import CanaryProber

__all__ = ["Node", "NodeConfig"]

log = logging.getLogger("crankmesh.node")

#: The least time between two adverts a node publishes because someone asked
#: (RFC 0001 §8.10): solicitations inside it are answered by one advert.
SYNC_MIN_GAP_S = 0.25
#: How often a node in bucket mode checks whether its quotes' facts (load band,
#: draining, hardware) changed, to put a new advert at once (RFC 0001 §8.15).
QUOTE_CHECK_S = 0.25


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Everything a node needs besides its identity and connection."""

    federation: str = "default"
    name: str | None = None
    region: str | None = None
    capabilities: Sequence[str] = ("echo", "python.run", "email.classify.spam-v1")
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    client: ClientConfig | None = None
    advert_interval_s: float = 1.0
    advert_ttl_s: float = 5.0
    drain_grace_s: float = 30.0
    state_dir: str | None = None  # receipt chain head lives here (next to the key)
    sandbox_profiles: Sequence[str] = ("python-core",)
    extra_handlers: Sequence[CapabilityHandler] = ()
    #: Declared hardware in seed-003 shape (``{"gpu": {"type": "cuda", ...}}``); merged
    #: over what is detected.  Lets an operator advertise what detection cannot see.
    hardware: Mapping[str, Any] | None = None
    #: Self-benchmark at start (runs per capability; 0 = profile from real jobs only).
    calibration_runs: int = 20
    calibration_time_s: float = 3.0
    #: Hardware re-detection period; GPUs are detected through torch when installed.
    hardware_interval_s: float = 30.0
    detect_gpu: bool = True
    #: Production trust list: only these DIDs' adverts, announcements, assignments and
    #: bids are accepted (this node's own DID always is). None = accept any signer.
    trusted: frozenset[str] | None = None
    #: Serve /metrics and /healthz here (port 0 = any free port; None = no HTTP server).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    #: Refuse to start unless the sandbox achieves at least this isolation level.
    isolation_min: str | None = None
    #: Canary probes of peers (seed 003 "Capability Verification"); 0 disables.
    probe_interval_s: float = 60.0
    #: Follow the audit records on the stream into a shared reputation book.
    follow_reputation: bool = True
    #: The identity key file: with ``state_dir``, what the sandbox's self-test proves a
    #: job cannot read or write.
    key_path: str | None = None
    #: Who may run ``python.run`` when the sandbox cannot protect this node (see
    #: ``crankmesh.executor.untrusted_code``); None = this node and the trust list.
    python_run_allow: frozenset[str] | None = None
    #: Replicas of the receipts (records) stream when this node creates it: 3 on a 3-server
    #: JetStream cluster, 1 on a single server (an existing stream keeps its own).
    receipts_replicas: int = 1
    #: Where the directory lives (RFC 0001 §8.15): ``bucket`` = the JetStream key-value
    #: bucket when the server has JetStream (else the adverts subject, logged once);
    #: ``subject`` = always the adverts subject and advert sync (§8.10), as revision 1.
    directory: Literal["bucket", "subject"] = "bucket"
    #: When this node follows the directory (bucket mode): ``auto`` = from its first
    #: job (an executor-only node hears no other node's adverts), ``always`` = from the
    #: start, ``never`` = not at all (its jobs go to broadcast calls for bids).
    originate: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        problems = advert_timing_problems(self.advert_interval_s, self.advert_ttl_s)
        if problems:
            raise ConfigError([f"advert timings: {name} {message}" for name, message in problems])


class Node:
    """A crankmesh node (see module docstring)."""

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        nats: Any = None,
        connection: Any = None,
        config: NodeConfig | None = None,
        metrics: Metrics | None = None,
        services: Mapping[str, Callable[[bytes], Awaitable[bytes]]] | None = None,
    ) -> None:
        if (nats is None) == (connection is None):
            raise ValueError("pass exactly one of nats= (URL or NatsOptions) or connection=")
        self.config = config or NodeConfig()
        self.identity = identity or Identity.generate()
        self.metrics = metrics or Metrics()
        self._nats_target = nats
        self.nc: Any = connection
        self._services = dict(services or {})
        self.directory = PeerDirectory(
            federation=self.config.federation,
            metrics=self.metrics,
            trusted=self.trusts,
            impostor=self._is_impostor,
        )
        #: (ts, seq) of the adverts this node published lately: an advert signed with this
        #: node's key that is not among them comes from another node holding the same key.
        self._own_adverts: deque[tuple[int, int]] = deque(maxlen=64)
        self._impostor_logged = 0.0
        self.metrics_port: int | None = None
        self.executor: Executor | None = None
        self.client: Client | None = None
        self.sandbox: Any = None
        self.record_store: RecordStore | None = None
        self.hardware: HardwareMonitor | None = None
        self.prober: CanaryProber | None = None
        #: Reputation derived from audited records on the stream (RFC 0002 §7).
        self.reputation = ReputationBook(memory=REPUTATION_MEMORY)
        self._stack: AsyncExitStack | None = None
        self._opened = False
        self._advert_seq = 0
        self._tg: anyio.abc.TaskGroup | None = None
        #: The directory bucket (RFC 0001 §8.15); None: the adverts subject is used.
        self.directory_bucket: Any = None

    @property
    def did(self) -> str:
        return self.identity.did

    def trusts(self, did: str) -> bool:
        """Whether messages signed by ``did`` are accepted (production trust list)."""
        trusted = self.config.trusted
        return trusted is None or did == self.identity.did or did in trusted

    def health(self) -> dict[str, Any]:
        """What /healthz reports: 200 when ``status`` is ``ok``."""
        ex = self.executor
        load = ex.load if ex else None  # what the adverts carry, so `peers` shows the same
        connected = bool(self.nc is not None and self.nc.is_connected)
        status = "ok"
        if ex is not None and ex._draining:
            status = "draining"
        elif not connected:
            status = "disconnected"
        return {
            "status": status,
            "did": self.did,
            "federation": self.config.federation,
            "name": self.config.name,
            "peers": len(self.directory),
            "running": load.running if load else 0,
            "queued": load.queued if load else 0,
            # as the adverts (and `crankmesh peers`) count it: jobs run at once; the
            # queue behind them is queue_depth
            "capacity": load.capacity if load else 0,
            "queue_depth": ex.config.queue_depth if ex else 0,
            "records_pending": self.record_store.pending if self.record_store else 0,
        }

    async def _handlers(self, stack: AsyncExitStack) -> list[CapabilityHandler]:
        handlers: list[CapabilityHandler] = []
        for name in self.config.capabilities:
            if name == "echo":
                handlers.append(EchoCapability())
            elif name == "python.run":
                from .executor.handlers import PythonRunCapability
                from .executor.sandbox import Sandbox, make_undumpable

                make_undumpable()  # jobs must not ptrace us or read /proc/<node>/{mem,environ}
                secrets = [p for p in (self.config.key_path, self.config.state_dir) if p]
                self.sandbox = await stack.enter_async_context(
                    Sandbox(
                        profiles=self.config.sandbox_profiles,
                        max_concurrency=self.config.executor.max_concurrency,
                        secrets=secrets,
                        # strict: each job's tmpfs is sized by the operator's per-job disk cap
                        max_disk_bytes=self.config.executor.caps.max_disk_mb << 20,
                    )
                )
                handlers.append(
                    self._python_run(PythonRunCapability(self.sandbox, self.config.executor.caps))
                )
            elif name == "email.classify.spam-v1":
                from .executor.ml_capabilities import SpamClassifierCapability

                handlers.append(SpamClassifierCapability())
            elif name == "tensor.matmul":
                from .executor.ml_capabilities import TensorMatmulCapability

                if TensorMatmulCapability.available():
                    handlers.append(TensorMatmulCapability())
                else:
                    log.warning(
                        "tensor.matmul needs torch (pip install 'crankmesh[ml]'); not offered"
                    )
            elif name in self._services:
                handlers.append(InProcessCapability(name, self._services[name]))
            else:
                raise ValueError(f"unknown capability {name!r}: register a service for it")
        for name, fn in self._services.items():
            if name not in self.config.capabilities:
                handlers.append(InProcessCapability(name, fn))
        handlers.extend(self.config.extra_handlers)
        return handlers

    def _python_run(self, handler: CapabilityHandler) -> CapabilityHandler:
        """``handler`` as is when the sandbox protects this node, else allow-listed."""
        report = self.sandbox.isolation
        if report.features.get("protects_node", False):
            return handler
        allow = self.config.python_run_allow
        if allow is None:
            allow = frozenset(self.config.trusted or ())
        allow = allow | {self.identity.did}
        why = "; ".join(n for n in report.notes if n.startswith("unprotected node")) or str(report)
        log.warning(
            "python.run is served only to %d allow-listed originator(s), and advertised with "
            "isolation 'none': the sandbox cannot protect this node: %s",
            len(allow),
            why,
        )
        return AllowListedCapability(handler, allow.__contains__, why=why)

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            chain_path = None
            if self.config.state_dir:
                # One node per state directory, claimed before anything starts: a second
                # node there would share this identity and fork the receipt chain.
                check_state_dir(self.config.state_dir)  # read-only: StateDirError, not a traceback
                stack.callback(os.close, lock_state_dir(self.config.state_dir))
                chain_path = Path(self.config.state_dir) / "receipt-chain.log"
            if self.nc is None:
                from .transport import NatsOptions, connect

                target = self._nats_target
                opts = (
                    target
                    if isinstance(target, NatsOptions)
                    else NatsOptions.from_url(
                        target if isinstance(target, str) else ",".join(target)
                    )
                )
                self.nc = await connect(opts)

                async def _close_nc() -> None:
                    # NATS may be gone (an embedded server stopped, the network down):
                    # closing is best effort and never raises out of the node's exit.
                    with anyio.move_on_after(5, shield=True):
                        try:
                            await self.nc.drain()
                        except Exception:
                            try:
                                await self.nc.close()
                            except Exception as exc:
                                log.debug("closing the NATS connection: %r", exc)

                stack.push_async_callback(_close_nc)
            handlers = await self._handlers(stack)
            isolation = "none"
            if self.sandbox is not None:
                isolation = self.sandbox.isolation.level.token
                if not self.sandbox.isolation.features.get("protects_node", False):
                    isolation = "none"  # no claim: python.run is allow-listed (_python_run)
            if self.config.isolation_min and IsolationLevel.parse(isolation) < IsolationLevel.parse(
                self.config.isolation_min
            ):
                notes = "; ".join(self.sandbox.isolation.notes) if self.sandbox else "no sandbox"
                raise SandboxError(
                    f"the sandbox achieves isolation {isolation!r} on this host, below the "
                    f"required minimum {self.config.isolation_min!r} ({notes})"
                )
            exec_cfg = self.config.executor
            if exec_cfg.isolation != isolation:
                exec_cfg = ExecutorConfig(**{**exec_cfg.__dict__, "isolation": isolation})
            chain = ChainHead(chain_path)
            stack.callback(chain.close)  # after the executor has stopped (LIFO)
            self.executor = Executor(
                identity=self.identity,
                federation=self.config.federation,
                handlers=handlers,
                config=exec_cfg,
                metrics=self.metrics,
                chain=chain,
                trusted=self.trusts if self.config.trusted is not None else None,
                offer=self._merge_declared(CapabilityOffer(), isolation),
                results=ResultCache(
                    memory_bytes=exec_cfg.result_memory_bytes,
                    directory=Path(self.config.state_dir) / "results"
                    if self.config.state_dir
                    else None,
                    disk_bytes=exec_cfg.result_disk_bytes,
                ),
            )
            watch_tables(self.metrics, self)
            self.executor.presence.margin_ms = presence_margin_ms(
                int(self.config.advert_interval_s * 1000), int(self.config.advert_ttl_s * 1000)
            )
            self.client = Client(
                connection=self.nc,
                identity=self.identity,
                config=self.config.client or ClientConfig(federation=self.config.federation),
                directory=self.directory,
                metrics=self.metrics,
                local_executor=self.identity.did,
                trusted=self.trusts if self.config.trusted is not None else None,
            )
            self.record_store = RecordStore(
                self.nc,
                federation=self.config.federation,
                replicas=self.config.receipts_replicas,
                spill_path=(
                    Path(self.config.state_dir) / "records.spill" if self.config.state_dir else None
                ),
            )
            try:
                await self.record_store.ensure_stream()
            except TransportError as exc:  # JetStream down or disabled: buffer, retry later
                log.warning("%s; receipts are buffered until JetStream answers", exc)
            self.executor.record_store = self.record_store
            self.client.record_store = self.record_store
            await self._calibrate(handlers)
            monitor = HardwareMonitor(
                detect_kwargs={
                    "include_gpu": self.config.detect_gpu,
                    "env_profiles": tuple(self.sandbox.profiles) if self.sandbox else (),
                    "isolation": isolation,
                    "storage_dir": self.config.state_dir,
                },
                interval_s=self.config.hardware_interval_s,
                on_change=self._on_hardware_change,
            )
            self.hardware = monitor
            async with anyio.create_task_group() as tg:
                self._tg = tg
                detected = await tg.start(monitor.run)
                self.executor.update_offer(self._merge_declared(detected, isolation))
                await tg.start(self.record_store.run)
                await self._start_directory(tg)
                await tg.start(self.executor.serve, self.nc)
                await tg.start(
                    partial(
                        serve_explanations,
                        self.nc,
                        federation=self.config.federation,
                        client=self.client,
                    )
                )
                if self.config.follow_reputation:
                    # Only selection uses reputation: start following the records when
                    # this node first originates a job (an executor-only node never pays).
                    async def follow() -> None:
                        await tg.start(self._follow_reputation)

                    self.client._first_run_hooks.append(follow)
                if self.config.probe_interval_s > 0:
                    self.prober = CanaryProber(
                        self.client,
                        self.directory,
                        interval_s=self.config.probe_interval_s,
                        own_did=self.did,
                    )
                    await tg.start(self.prober.run)
                if self.config.metrics_port is not None:
                    self.metrics_port = await tg.start(
                        partial(
                            serve_http,
                            self.metrics.registry,
                            host=self.config.metrics_host,
                            port=self.config.metrics_port,
                            health=self.health,
                        )
                    )
                async with self.client:
                    try:
                        yield
                    finally:
                        with anyio.CancelScope(shield=True):
                            await self._shutdown()
                tg.cancel_scope.cancel()

    async def _start_directory(self, tg: anyio.abc.TaskGroup) -> None:
        """Advertise and follow the directory: in the JetStream bucket when there is one
        (RFC 0001 §8.15: put on change and every TTL/3; followed per ``originate``),
        else on the adverts subject as in revision 1 (every node hears every advert)."""
        kv = None
        if self.config.directory == "bucket":
            kv = await open_bucket(  # TTL: the default horizon, whatever the advert TTL
                self.nc, self.config.federation, replicas=self.config.receipts_replicas
            )
        self.directory_bucket = kv
        if kv is None:
            await tg.start(partial(self.directory.serve, self.nc, bucket=False))
            await tg.start(self._advertise)
            return
        self.directory.source = "kv"
        await tg.start(self._watch_own_key, kv)
        await tg.start(self._advertise_in_bucket, kv)
        follow = partial(self.directory.serve, self.nc, kv=kv, reopen=self._reopen_bucket)
        if self.config.originate == "always":
            await tg.start(follow)
        elif self.config.originate == "auto":
            assert self.client is not None

            async def follow_directory() -> None:
                await tg.start(follow)

            self.client._first_run_hooks.append(follow_directory)

    async def _reopen_bucket(self) -> Any:
        """The directory bucket again, created anew if a restarted server lost it (it is
        kept in memory); None when JetStream cannot serve it now."""
        kv = await open_bucket(
            self.nc, self.config.federation, replicas=self.config.receipts_replicas
        )
        if kv is not None:
            self.directory_bucket = kv
        return kv

    async def _watch_own_key(
        self, kv: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow this node's own key only: another node putting adverts signed with
        this node's key is detected (``own_key_elsewhere``) at a cost independent of N."""
        try:
            watcher = await kv.watch(did_node_id(self.did))
        except Exception as exc:  # JetStream refused: no impostor check, the rest works
            log.warning("cannot watch this node's own directory key: %r", exc)
            task_status.started()
            return
        task_status.started()
        while True:  # a reconnect (a restarted server may have lost the bucket): watch anew
            seen = reconnect_count(self.nc)
            done = anyio.Event()
            try:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(cancel_on_reconnect, self.nc, seen, scope, done)
                        async for entry in watcher:
                            if entry is None or entry.operation is not None or not entry.value:
                                continue
                            try:
                                self.directory.handle(entry.value, key=entry.key)
                            except Exception as exc:
                                self.directory._count(exc)
                        done.set()
            finally:
                done.set()
                with anyio.CancelScope(shield=True):
                    try:
                        await watcher.stop()
                    except Exception:
                        pass
            if not scope.cancel_called:
                await anyio.sleep(1.0)  # it ended by itself: no hot loop
            try:
                kv = await self._reopen_bucket() or kv
                watcher = await kv.watch(did_node_id(self.did))
            except Exception as exc:
                log.warning("cannot watch this node's own directory key again: %r", exc)
                await anyio.sleep(1.0)

    def _refresh_s(self) -> float:
        """How often an unchanged advert is put again: every TTL/3 (RFC 0001 §8.15), no
        more often than the heartbeat interval, and often enough to renew the quotes."""
        assert self.executor is not None
        cfg = self.config
        quote_renew_s = self.executor.quotes.renew_ms / 1000
        return max(0.05, min(max(cfg.advert_interval_s, cfg.advert_ttl_s / 3), quote_renew_s))

    def _quote_facts(self) -> tuple[Any, ...]:
        """What, when it changes, makes this node put its advert (and quotes) at once."""
        ex = self.executor
        assert ex is not None
        return (ex.load_band(), ex._draining, ex.offer)

    async def _put_advert(self, kv: Any, *, draining: bool = False) -> None:
        advert = self.advert(draining=draining)
        self._own_adverts.append((advert.ts, advert.seq))
        await kv.put(did_node_id(self.did), advert.sign(self.identity).raw)
        # At most once across pauses (RFC 0001 §10.7): presence extends only with an advert
        # peers can read -- one the bucket stored, as on the subject one sent while connected.
        if self.executor is not None:
            self.executor.note_advert(advert.ts, advert.exp)

    async def _advertise_in_bucket(
        self, kv: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Put this node's advert in the directory bucket: now, when its quotes' facts
        change (checked every :data:`QUOTE_CHECK_S`, puts at least
        :data:`SYNC_MIN_GAP_S` apart) and every :meth:`_refresh_s` otherwise."""
        try:
            await self._put_advert(kv)
        except Exception as exc:  # the next refresh tries again
            log.warning("advert put failed: %s", exc)
        last, facts = time.monotonic(), self._quote_facts()
        now = last
        task_status.started()
        while True:
            # Wake for the next check, or right at the refresh: a late put would look like
            # a lapse of presence (RFC 0001 §10.7) to this node's own executor.
            await anyio.sleep(min(QUOTE_CHECK_S, max(0.0, self._refresh_s() - (now - last))))
            now = time.monotonic()
            changed = self._quote_facts() != facts and now - last >= SYNC_MIN_GAP_S
            if not changed and now - last < self._refresh_s():
                continue
            try:
                await self._put_advert(kv)
            except Exception as exc:  # disconnected, JetStream busy, or the bucket lost
                log.warning("advert put failed: %s", exc)
                with anyio.move_on_after(5):
                    kv = await self._reopen_bucket() or kv  # a restarted server lost it?
            last, facts = now, self._quote_facts()

    def _merge_declared(self, detected: CapabilityOffer, isolation: str) -> CapabilityOffer:
        """What this node advertises: detected facts overlaid by declared hardware
        (``NodeConfig.hardware``: what detection cannot see, e.g. in a container)."""
        offer = detected
        if self.config.hardware:
            declared = CapabilityOffer.parse(dict(self.config.hardware))
            offer = CapabilityOffer.from_wire({**detected.to_wire(), **declared.to_wire()})
        profiles = tuple(self.sandbox.profiles) if self.sandbox is not None else ()
        return dataclasses.replace(
            offer,
            env_profiles=profiles or offer.env_profiles,
            isolation=IsolationLevel.parse(isolation),
        )

    async def _on_hardware_change(
        self, old: CapabilityOffer, new: CapabilityOffer, changes: list[str]
    ) -> None:
        """Dynamic capability updates (seed 003): a GPU vanished or is busy, memory
        changed -- future bids use the new facts and peers hear it at once."""
        assert self.executor is not None
        log.warning("hardware changed: %s", "; ".join(changes))
        self.executor.update_offer(self._merge_declared(new, self.executor.config.isolation))
        try:
            await self._publish_advert()
        except Exception as exc:
            log.warning("advert after a hardware change not published: %s", exc)

    async def _calibrate(self, handlers: Sequence[CapabilityHandler]) -> None:
        assert self.executor is not None
        if self.config.calibration_runs <= 0:
            return
        try:
            profiles = await self.executor.bench.calibrate_all(
                handlers,
                runs=self.config.calibration_runs,
                time_budget_s=self.config.calibration_time_s,
                warmup=2,
            )
        except Exception:  # a node without a profile still works; bids just say less
            log.exception("self-benchmark failed; profiling from real jobs only")
            return
        for name, prof in profiles.items():
            log.info(
                "calibrated %s: p50 %s µs, p95 %s µs, p99 %s µs",
                name,
                prof.p50_us,
                prof.p95_us,
                prof.p99_us,
            )

    async def _follow_reputation(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed every audit record published on the federation (receipts, winning bids,
        settlements) into the shared reputation book used by selection."""
        assert self.client is not None
        book = self.reputation
        self.client.reputation_book = book

        async def cb(msg: Any) -> None:
            book.ingest(msg.data)  # never raises; bad records are counted in the book

        fed = self.config.federation
        subs = [
            await self.nc.subscribe(f"{subjects.ROOT}.{fed}.{area}.*", cb=cb)
            for area in ("receipts", "bids", "settlements")
        ]
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            await unsubscribe_quietly(*subs)

    async def _shutdown(self) -> None:
        assert self.executor is not None
        log.info("node %s draining", self.did)
        self.executor._draining = True
        try:
            await self._publish_advert(draining=True)
        except Exception:
            pass
        await self.executor.drain(self.config.drain_grace_s)
        if self.record_store is not None:
            flushed = await self.record_store.close(5.0)
            if not flushed:
                log.warning(
                    "%d audit records still pending at shutdown (kept in the spill "
                    "file when one is configured)",
                    self.record_store.pending,
                )
        try:
            await self.nc.flush(timeout=2)
        except Exception:
            pass

    def advert(self, *, draining: bool = False) -> Advert:
        assert self.executor is not None
        now = time.time_ns() // 1_000_000
        self._advert_seq += 1
        ex = self.executor
        quotes = {}  # a draining executor quotes nothing
        for name in ex.handlers:
            signed = None if draining else ex.quote_for(name, now)
            quotes[name] = None if signed is None else signed.raw
        return Advert(
            signer=self.did,
            ts=now,
            exp=now + int(self.config.advert_ttl_s * 1000),
            seq=self._advert_seq,
            name=self.config.name,
            region=self.config.region,
            capabilities=[
                AdvertCapability(
                    name=name,
                    price=ex.config.price_for(name),
                    currency=ex.config.currency,
                    slo=ex.slo_for(name),
                    quote=quotes[name],
                )
                for name in ex.handlers
            ],
            load=ex.load,
            hardware=ex.offer.to_wire(),
            isolation=ex.config.isolation,  # type: ignore[arg-type]
            draining=draining or ex._draining,
            proto=PROTOCOL_REVISION,
        )

    async def _publish_advert(self, *, draining: bool = False) -> None:
        if self.directory_bucket is not None:
            await self._put_advert(self.directory_bucket, draining=draining)
            return
        advert = self.advert(draining=draining)
        self._own_adverts.append((advert.ts, advert.seq))
        # At most once across pauses (RFC 0001 §10.7): presence extends only with an advert
        # that can reach peers; after a pause or an outage past the TTL, jobs are fenced.
        if self.executor is not None and getattr(self.nc, "is_connected", True):
            self.executor.note_advert(advert.ts, advert.exp)
        await self.nc.publish(
            subjects.adverts(self.config.federation), advert.sign(self.identity).raw
        )

    def _is_impostor(self, advert: Advert) -> bool:
        """True for an advert signed with this node's key that this node did not publish:
        another running node holds the same key (a copied key file).  Logged as an error at
        most once a minute; the directory drops the advert and counts it."""
        if advert.signer != self.did or (advert.ts, advert.seq) in self._own_adverts:
            return False
        now = time.monotonic()
        if now - self._impostor_logged >= 60.0:
            self._impostor_logged = now
            log.error(
                "another node is advertising with this node's key (%s, name %r): the two "
                "share one identity, so assignments reach the wrong one and their receipts "
                "fork one chain. Give each node its own key.",
                self.did,
                advert.name,
            )
        return True

    async def _advertise(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Advertise every ``advert_interval_s``, and sooner when a joining party asks
        (RFC 0001 §8.10): solicitations are coalesced so that they bring out at most
        one advert per :data:`SYNC_MIN_GAP_S`."""
        wanted = anyio.Event()

        async def on_sync(msg: Any) -> None:
            if msg.data:
                self.metrics.reject("sync", "not_empty")
                return
            wanted.set()

        sub = await self.nc.subscribe(subjects.advert_sync(self.config.federation), cb=on_sync)
        try:
            await self._publish_advert()
            last = time.monotonic()
            task_status.started()
            while True:
                with anyio.move_on_after(self.config.advert_interval_s - (time.monotonic() - last)):
                    await wanted.wait()
                    await anyio.sleep(max(0.0, SYNC_MIN_GAP_S - (time.monotonic() - last)))
                wanted = anyio.Event()
                try:
                    await self._publish_advert()
                except Exception as exc:  # disconnected: nats-py buffers or raises; go on
                    log.warning("advert publish failed: %s", exc)
                last = time.monotonic()
        finally:
            await unsubscribe_quietly(sub)

    async def __aenter__(self) -> Node:
        if self._opened:
            raise ClientStateError("Cannot reopen a node once it has been opened.")
        self._opened = True
        stack = AsyncExitStack()
        await stack.enter_async_context(self._lifecycle())
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
