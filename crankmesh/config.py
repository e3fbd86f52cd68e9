"""Node settings: one typed, immutable model of everything an operator can set.

:class:`NodeSettings` is a ``pydantic-settings`` model (one field per setting, declared
once); the environment and TOML layers are read by pydantic-settings' sources.
:func:`load_settings` builds it from four layers, highest first:

==========  =========================================================================
flags       command-line options (a mapping of setting name -> value; ``None`` means
            "not given", so argparse defaults must be ``None``)
env         ``CRANKMESH_*`` environment variables (see :data:`SETTINGS` for each name;
            the mode is ``CRANKMESH_ENV``); an empty variable counts as not set
file        a TOML file (``file=`` or ``$CRANKMESH_CONFIG``): top-level keys are setting
            names, per-capability prices are a ``[prices]`` table; unknown keys are an
            error; relative paths are relative to the file's directory
defaults    zero-config values; a few depend on the mode (below)
==========  =========================================================================

``prices`` merges per capability across layers (a flag overrides one capability's price
from the file, the others stay); every other setting is replaced as a whole.

Mode (:func:`detect_mode`): an explicit value wins (flag ``mode``, ``CRANKMESH_ENV``, the
file's ``mode``, in that order); when none is given the mode is ``production`` if the
``CI`` environment variable is truthy and ``development`` otherwise.

- development: an embedded nats-server when no NATS URL is set, an identity generated
  under the state directory on first start, console logs, metrics on a free port.
- production: :func:`validate_for_mode` demands an existing identity key file, NATS
  URL(s), TLS and/or NATS credentials, and a non-empty trust list; JSON logs, metrics on
  port 9464.

Values from the environment and flags are strings and are parsed by type: integers,
floats, booleans (``1/0, true/false, yes/no, on/off``), lists (comma- or blank-separated),
prices (``"2000"`` = 2000 micro-units, ``"0.002"`` = 0.002 units = 2000 micro-units) and
price maps (``"python.run=0.005,echo=1500"``).

Secrets (``nats_token``, ``nats_password``, user info in NATS URLs) never appear in
``repr()``, :meth:`NodeSettings.redacted`, :meth:`NodeSettings.to_toml` (by default) or in
error messages.

Error handling: every problem with a value (bad type, out of range, unknown TOML key,
unreadable file) raises :class:`ConfigError`, which lists *all* problems at once, each
naming the setting and where its value came from.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

# ConfigError and the advert timing check live apart so that node.py can use them
# without importing this module: the dependency between the two runs one way.
from ._config_checks import ConfigError, advert_timing_problems
from .protocol.errors import InvalidDID
from .protocol.identity import public_key_from_did
from .protocol.messages import CAPABILITY_RE
from .transport import redact_url

if TYPE_CHECKING:
    from .executor.agent import ExecutorConfig
    from .node import NodeConfig
    from .transport import NatsOptions

__all__ = [
    "ENV_CONFIG",
    "advert_timing_problems",
    "ENV_MODE",
    "MODES",
    "SETTINGS",
    "ConfigError",
    "LogFormat",
    "Mode",
    "NodeSettings",
    "SettingInfo",
    "add_node_arguments",
    "detect_mode",
    "flags_from_args",
    "load_settings",
    "load_trust_file",
    "parse_price",
    "trusted_dids",
    "validate_for_mode",
]

Mode = Literal["development", "production"]
LogFormat = Literal["json", "console"]

MODES: Final[tuple[Mode, ...]] = ("development", "production")
ENV_MODE: Final = "CRANKMESH_ENV"
ENV_CONFIG: Final = "CRANKMESH_CONFIG"
ENV_HOME: Final = "CRANKMESH_HOME"
_ENV_PREFIX: Final = "CRANKMESH_"
# CRANKMESH_* variables that are not settings but are known (no "unknown variable" warning).
_ENV_OTHER: Final = frozenset({ENV_CONFIG, ENV_HOME, "CRANKMESH_EVENT_LOOP"})  # see _loop.py

_MASK: Final = "***"
_MICROS: Final = 1_000_000
_MODE_ALIASES: Final[Mapping[str, Mode]] = {
    "development": "development",
    "dev": "development",
    "production": "production",
    "prod": "production",
}
_TRUE: Final = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n", "f"})
_FED_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_CURRENCY_RE: Final = re.compile(r"^[A-Z][A-Z0-9]{2,7}\Z")
_ISOLATION_LEVELS: Final = ("none", "basic", "standard", "strict")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SANDBOXED_CAPABILITY: Final = "python.run"


# ----------------------------------------------------------------------------- the model

Kind = Literal[
    "str", "opt_str", "int", "float", "bool", "path", "opt_path", "list", "price", "prices"
]


@dataclass(frozen=True, kw_only=True)
class SettingInfo:
    """How one setting is named and parsed in each layer.

    ``name`` is the field of :class:`NodeSettings`, the TOML key and the flags-mapping key;
    ``env`` the environment variable; ``flags`` the command-line options
    (:func:`add_node_arguments`); ``choices`` the allowed values, if limited.
    """

    name: str
    kind: Kind
    help: str
    env: str
    flags: tuple[str, ...]
    secret: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Opt:
    """What a :class:`NodeSettings` field declares besides its type and default (kept in
    the field's metadata); with the field's name it becomes its :class:`SettingInfo`."""

    kind: Kind
    flags: tuple[str, ...] = ()
    secret: bool = False
    choices: tuple[str, ...] = ()
    env: str | None = None


def _opt(
    default: Any,
    kind: Kind,
    help: str,
    *,
    factory: Callable[[], Any] | None = None,
    flags: tuple[str, ...] = (),
    secret: bool = False,
    choices: tuple[str, ...] = (),
    env: str | None = None,
) -> Any:
    """One setting: a pydantic ``Field`` (default, help as its description, and the env
    variable as its alias when it is not ``CRANKMESH_<NAME>``) carrying an :class:`_Opt`."""
    extra: dict[str, Any] = {"validation_alias": AliasChoices(env)} if env else {}
    info = (
        Field(default_factory=factory, description=help, **extra)
        if factory is not None
        else Field(default, description=help, **extra)
    )
    info.metadata.append(_Opt(kind, flags, secret, choices, env))
    return info


class NodeSettings(BaseSettings):
    """Everything an operator can set on a ``crankmesh node``; see :data:`SETTINGS`.

    A ``pydantic-settings`` model: each field is one setting, declared once with its type,
    default, parsing kind, help and flags (:func:`_opt`); :data:`SETTINGS` is derived from
    the fields. Build it with :func:`load_settings`, which layers flags >
    env > TOML > defaults through pydantic-settings' sources. Direct construction is
    allowed (tests, embedding), reads no environment, validates every value (raising
    :class:`ConfigError`), but uses the *development* defaults for ``metrics_port`` and
    ``log_format`` whatever the ``mode``. Instances are immutable; use
    ``model_copy(update=...)`` for a changed copy. Prices are integer micro-units of
    ``currency``. ``sources`` says where each value came from (``"flag --price"``,
    ``"env CRANKMESH_NATS"``, ``"file /etc/crankmesh/node.toml"``, ``"default"``);
    ``warnings`` lists ignored inputs (e.g. an unknown ``CRANKMESH_*`` variable) for the
    daemon to log once logging is configured. Equality compares the settings only.

    Adding a setting: declare a field here (``name: type = _opt(default, kind, help)``);
    it then has an env variable ``CRANKMESH_<NAME>``, a flag ``--<name>``, a TOML key, a
    line in ``--print-config`` and a row to add to docs/operating.md. Range checks go in
    :func:`_check`, production checks in :func:`validate_for_mode`.
    """

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        case_sensitive=False,  # field names are lower-case; _EnvSource passes exact names only
        env_ignore_empty=True,
        enable_decoding=False,  # env values are crankmesh's own formats, parsed by _parse
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,  # never echo a secret
    )

    mode: Mode = _opt(
        "development",
        "str",
        "development or production (default: production if $CI is truthy, else development)",
        choices=MODES,
        env=ENV_MODE,
    )
    state_dir: Path = _opt(
        None,
        "path",
        "directory for the receipt-chain head and (by default) the key (default: the "
        "key file's directory when key is set, else $CRANKMESH_HOME or ~/.crankmesh)",
        factory=lambda: _home(os.environ),
    )
    key: Path | None = _opt(
        None,
        "opt_path",
        "identity key file (default: <state_dir>/node.key; created in development mode only)",
    )
    nats: tuple[str, ...] = _opt(
        (),
        "list",
        "NATS server URL(s), comma-separated (default: an embedded nats-server; development only)",
    )
    tls_ca_file: Path | None = _opt(None, "opt_path", "CA bundle to verify the NATS servers")
    tls_cert_file: Path | None = _opt(None, "opt_path", "client certificate for mutual TLS to NATS")
    tls_key_file: Path | None = _opt(None, "opt_path", "private key of the client certificate")
    nats_creds_file: Path | None = _opt(None, "opt_path", "NATS .creds file (JWT + nkey seed)")
    nats_nkey_seed_file: Path | None = _opt(None, "opt_path", "NATS nkey seed file")
    nats_token: str | None = _opt(
        None,
        "opt_str",
        "NATS token (secret: prefer the env variable, flags show in `ps`)",
        secret=True,
    )
    nats_user: str | None = _opt(None, "opt_str", "NATS user name (with nats_password)")
    nats_password: str | None = _opt(
        None,
        "opt_str",
        "NATS password (secret: prefer the env variable, flags show in `ps`)",
        secret=True,
    )
    federation: str = _opt(
        "default", "str", "federation name: subjects live under crank.<federation>.>"
    )
    name: str | None = _opt(None, "opt_str", "human-readable node name, shown in adverts")
    region: str | None = _opt(None, "opt_str", "region label, shown in adverts")
    capabilities: tuple[str, ...] = _opt(
        ("echo", "python.run"),
        "list",
        "capabilities to offer, comma-separated (default: echo,python.run)",
    )
    price: int = _opt(
        1000,
        "price",
        "default price per job: micro-units (1000) or units with a decimal point (0.001)",
    )
    prices: Mapping[str, int] = _opt(
        None,
        "prices",
        "per-capability price CAP=PRICE (flag repeatable; env comma-separated)",
        flags=("--capability-price",),
        factory=dict,
    )
    currency: str = _opt("USD", "str", "currency code of all prices (default: USD)")
    max_concurrency: int = _opt(2, "int", "jobs executing at once (default: 2)")
    queue_depth: int = _opt(8, "int", "accepted jobs waiting for a slot (default: 8)")
    bid_valid_ms: int = _opt(
        10000,
        "int",
        "milliseconds a bid (and its capacity reservation) stays valid (default: 10000)",
    )
    quote_valid_ms: int = _opt(
        15000,
        "int",
        "milliseconds a firm quote stands (RFC 0001 §8.14; default: 15000)",
    )
    directory: str = _opt(
        "bucket",
        "str",
        "where adverts and quotes go: bucket (the JetStream directory bucket, falling back "
        "to the adverts subject without JetStream) or subject (default: bucket)",
        choices=("bucket", "subject"),
    )
    originate: str = _opt(
        "auto",
        "str",
        "when this node follows the directory: auto (from its first job), always, never "
        "(default: auto)",
        choices=("auto", "always", "never"),
    )
    advert_interval_s: float = _opt(
        1.0, "float", "seconds between advert heartbeats (default: 1)", flags=("--advert-interval",)
    )
    advert_ttl_s: float = _opt(
        5.0,
        "float",
        "seconds an advert stays valid (default: 5; at most 120)",
        flags=("--advert-ttl",),
    )
    drain_grace_s: float = _opt(
        30.0,
        "float",
        "seconds a draining node waits for accepted jobs (default: 30)",
        flags=("--drain-grace", "--grace"),
    )
    metrics_enabled: bool = _opt(
        True, "bool", "serve /metrics and /healthz over HTTP (default: on)", flags=("--metrics",)
    )
    metrics_host: str = _opt(
        "127.0.0.1", "str", "address of the metrics/health endpoint (default: 127.0.0.1)"
    )
    metrics_port: int = _opt(
        0,
        "int",
        "port of the metrics/health endpoint (default: 9464 in production, 0 = any free "
        "port in development)",
    )
    log_format: LogFormat = _opt(
        "console",
        "str",
        "json or console (default: json in production, console in development)",
        choices=("json", "console"),
    )
    log_level: str = _opt(
        "INFO", "str", "DEBUG, INFO, WARNING or ERROR (default: INFO)", choices=_LOG_LEVELS
    )
    trust: tuple[str, ...] = _opt(
        (), "list", "trusted peer DIDs, comma-separated (flag repeatable)"
    )
    trust_file: Path | None = _opt(
        None, "opt_path", "file of trusted peer DIDs, one per line (# comments)"
    )
    sandbox_profiles: tuple[str, ...] = _opt(
        ("python-core",), "list", "env profiles of the python.run sandbox (default: python-core)"
    )
    isolation_min: str | None = _opt(
        None,
        "opt_str",
        "refuse to start unless the sandbox reaches this isolation level "
        "(none, basic, standard, strict)",
        choices=_ISOLATION_LEVELS,
    )
    receipts_replicas: int = _opt(
        1,
        "int",
        "replicas of the receipts stream when this node creates it (default: 1; 3 on a "
        "3-server JetStream cluster)",
    )
    # executor caps (crankmesh.executor.caps): a job asking more is declined (over_caps)
    max_job_timeout_s: float = _opt(
        600.0, "float", "longest timeout one job may ask, s (default: 600)"
    )
    max_job_memory_mb: int = _opt(4096, "int", "most memory one job may ask, MB (default: 4096)")
    default_job_memory_mb: int = _opt(
        1024, "int", "memory of a job that asks none, MB (default: 1024)"
    )
    max_job_cpu_s: int = _opt(600, "int", "CPU seconds one job may use (default: 600)")
    max_job_output_bytes: int = _opt(
        8 * 1024 * 1024, "int", "largest max_output_bytes one job may ask (default: 8388608)"
    )
    max_job_disk_mb: int = _opt(64, "int", "disk quota of one job, MB (default: 64)")
    max_total_memory_mb: int = _opt(
        0, "int", "memory of all admitted jobs together, MB (default: 0 = no total cap)"
    )
    max_total_disk_mb: int = _opt(
        0, "int", "disk of all admitted jobs together, MB (default: 0 = no total cap)"
    )
    price_per_gib_s: int = _opt(
        0,
        "price",
        "added to a job's price per GiB-second it reserves (memory x timeout; default: 0)",
    )
    # not settings: where each value came from, and what was ignored
    sources: Mapping[str, str] = Field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = Field(default=(), repr=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Construction takes the values it is given and nothing else: load_settings runs
        # the env and TOML sources itself, to record where each value came from.
        return (init_settings,)

    def __init__(self, **values: Any) -> None:
        sources = values.get("sources") or {}
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_problems_of(exc, sources)) from None
        problems = [self._where(name, msg) for name, msg in _check(self)]
        if problems:
            raise ConfigError(problems)

    @field_validator("*", mode="before")
    @classmethod
    def _parse_setting(cls, value: Any, info: ValidationInfo) -> Any:
        setting = SETTINGS.get(info.field_name or "")
        if setting is None or value is None:
            return value
        if setting.kind == "list" and isinstance(value, str):
            raise ValueError("must be a sequence of strings, not one string")
        return _parse(setting, value)

    @field_validator("prices", "sources", mode="after")
    @classmethod
    def _freeze(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        return MappingProxyType(dict(value))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeSettings):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in SETTINGS)

    __hash__ = None  # type: ignore[assignment]  # the prices mapping is not hashable

    # ------------------------------------------------------------------ derived values

    @property
    def key_file(self) -> Path:
        """The identity key file: ``key``, or ``<state_dir>/node.key`` when not set."""
        return self.key if self.key is not None else self.state_dir / "node.key"

    @property
    def embedded_nats(self) -> bool:
        """True when no NATS URL is set: the daemon starts its own nats-server (dev only)."""
        return not self.nats

    @property
    def is_production(self) -> bool:
        return self.mode == "production"

    def price_for(self, capability: str) -> int:
        """Price in micro-units of ``currency`` for one job of ``capability``."""
        return self.prices.get(capability, self.price)

    def _where(self, name: str, message: str) -> str:
        source = self.sources.get(name, "default")
        shown = "" if source.startswith("default") else f" (from {source})"
        return f"{name}: {message}{shown}"

    # ------------------------------------------------------------------ printing

    def redacted(self) -> dict[str, Any]:
        """Every setting as JSON-friendly values, secrets replaced by ``"***"``.

        ``key`` shows the effective key file. For ``--print-config``.
        """
        out: dict[str, Any] = {}
        for name, info in SETTINGS.items():
            value = self.key_file if name == "key" else getattr(self, name)
            out[name] = _plain(value, secret=info.secret)
        return out

    def to_toml(self, *, redact: bool = True, sources: bool = True) -> str:
        """The settings as a TOML document that :func:`load_settings` reads back.

        With ``redact`` (the default) secrets are written as ``"***"`` (so the text is for
        showing, not for re-loading); with ``sources`` every value that is not a default
        gets a comment saying where it came from. Unset optional settings are written as
        comments.
        """
        values = {
            name: _plain(
                self.key_file if name == "key" else getattr(self, name),
                secret=info.secret,
                redact=redact,
            )
            for name, info in SETTINGS.items()
        }
        lines = [f"# crankmesh node settings (mode: {self.mode})"]
        if redact:
            lines.append("# secrets are shown as *** ; see `crankmesh node --help` for each key")
        for name in SETTINGS:
            if name == "prices":
                continue
            value = values[name]
            comment = ""
            source = self.sources.get(name)
            if sources and source and not source.startswith("default"):
                comment = f"  # from {source}"
            if value is None:
                lines.append(f"# {name} =  (not set){comment}")
            else:
                lines.append(f"{name} = {_toml_value(value)}{comment}")
        lines.append("")
        lines.append("[prices]  # per-capability prices, micro-units")
        for cap, price in sorted(self.prices.items()):
            lines.append(f"{_toml_str(cap)} = {price}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"NodeSettings({shown})"

    # ------------------------------------------------------------------ wiring helpers

    def nats_options(self, servers: Sequence[str] | None = None) -> NatsOptions:
        """:class:`~crankmesh.transport.NatsOptions` for these settings.

        ``servers`` overrides ``nats`` (pass the embedded server's URL in development).
        Raises :class:`ConfigError` when there is no URL at all.
        """
        from .transport import NatsOptions

        urls = tuple(servers) if servers is not None else self.nats
        if not urls:
            raise ConfigError(
                ["nats: no NATS URL; set --nats / CRANKMESH_NATS or start an embedded server"]
            )

        def s(path: Path | None) -> str | None:
            return None if path is None else str(path)

        try:
            return NatsOptions(
                servers=urls,
                name=self.name,
                tls_ca_file=s(self.tls_ca_file),
                tls_cert_file=s(self.tls_cert_file),
                tls_key_file=s(self.tls_key_file),
                user_credentials=s(self.nats_creds_file),
                nkeys_seed=s(self.nats_nkey_seed_file),
                token=self.nats_token,
                user=self.nats_user,
                password=self.nats_password,
            )
        except ValueError as exc:
            raise ConfigError([f"nats: {exc}"]) from None

    def executor_config(self, *, isolation: str = "none") -> ExecutorConfig:
        """The :class:`~crankmesh.executor.agent.ExecutorConfig` part of these settings."""
        from .executor.agent import ExecutorConfig
        from .executor.caps import ExecutorCaps

        return ExecutorConfig(
            prices=dict(self.prices),
            default_price=self.price,
            currency=self.currency,
            max_concurrency=self.max_concurrency,
            queue_depth=self.queue_depth,
            bid_valid_ms=self.bid_valid_ms,
            quote_valid_ms=self.quote_valid_ms,
            isolation=isolation,
            caps=ExecutorCaps(
                max_timeout_ms=round(self.max_job_timeout_s * 1000),
                max_memory_mb=self.max_job_memory_mb,
                default_memory_mb=self.default_job_memory_mb,
                max_cpu_s=self.max_job_cpu_s,
                max_output_bytes=self.max_job_output_bytes,
                max_disk_mb=self.max_job_disk_mb,
                max_total_memory_mb=self.max_total_memory_mb,
                max_total_disk_mb=self.max_total_disk_mb,
            ),
            price_per_gib_s=self.price_per_gib_s,
        )

    def node_config(self) -> NodeConfig:
        """The :class:`~crankmesh.node.NodeConfig` for these settings (logging and the
        NATS connection are applied by the daemon)."""
        from .node import NodeConfig

        return NodeConfig(
            federation=self.federation,
            name=self.name,
            region=self.region,
            capabilities=self.capabilities,
            executor=self.executor_config(),
            advert_interval_s=self.advert_interval_s,
            advert_ttl_s=self.advert_ttl_s,
            drain_grace_s=self.drain_grace_s,
            state_dir=str(self.state_dir),
            key_path=str(self.key_file),
            sandbox_profiles=self.sandbox_profiles,
            trusted=trusted_dids(self) or None,
            metrics_host=self.metrics_host,
            metrics_port=self.metrics_port if self.metrics_enabled else None,
            isolation_min=self.isolation_min,
            receipts_replicas=self.receipts_replicas,
            directory=cast(Any, self.directory),
            originate=cast(Any, self.originate),
        )


# ----------------------------------------------------------------------------- the table


def _settings_table() -> dict[str, SettingInfo]:
    table: dict[str, SettingInfo] = {}
    for name, f in NodeSettings.model_fields.items():
        opt = next((m for m in f.metadata if isinstance(m, _Opt)), None)
        if opt is None:  # sources, warnings
            continue
        table[name] = SettingInfo(
            name=name,
            kind=opt.kind,
            help=f.description or "",
            env=opt.env or _ENV_PREFIX + name.upper(),
            flags=opt.flags or ("--" + name.replace("_", "-"),),
            secret=opt.secret,
            choices=opt.choices,
        )
    return table


SETTINGS: Final[Mapping[str, SettingInfo]] = MappingProxyType(_settings_table())
"""Every setting by name, in display order: its env variable, flags, type and help."""

_ENV_TO_NAME: Final = MappingProxyType({i.env: i.name for i in SETTINGS.values()})


# ----------------------------------------------------------------------------- parsing


def parse_price(value: object) -> int:
    """A price in integer micro-units.

    ``1500`` / ``"1500"`` are micro-units; values with a decimal point or exponent
    (``0.0015``, ``"0.0015"``, ``"1.5e-3"``) are units. Raises :class:`ValueError` for
    negative prices, non-numbers and amounts finer than one micro-unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a price: {value!r}")
    if isinstance(value, int):
        micros = value
    elif isinstance(value, float | str):
        text = str(value).strip().replace("_", "")
        if isinstance(value, float) or any(c in text for c in ".eE"):
            try:
                amount = Decimal(text) * _MICROS
            except InvalidOperation:
                raise ValueError(f"not a price: {value!r}") from None
            if not amount.is_finite():
                raise ValueError(f"not a price: {value!r}")
            if amount != amount.to_integral_value():
                raise ValueError(f"{value!r} is finer than one micro-unit (0.000001)")
            micros = int(amount)
        else:
            try:
                micros = int(text, 10)
            except ValueError:
                raise ValueError(f"not a price: {value!r}") from None
    else:
        raise ValueError(f"not a price: {value!r}")
    if micros < 0:
        raise ValueError(f"a price cannot be negative: {value!r}")
    return micros


def _split(text: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", text) if part]


def _parse(info: SettingInfo, value: object, *, base: Path | None = None) -> Any:
    """Parse one raw value (a string from env/flags, or a TOML/typed value)."""
    kind = info.kind
    if kind in ("str", "opt_str"):
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        text = value.strip()
        if info.choices:
            folded = text.upper() if info.name == "log_level" else text.lower()
            if info.name == "mode":
                mode = _MODE_ALIASES.get(folded)
                if mode is None:
                    raise ValueError(f"must be one of {', '.join(MODES)}")
                return mode
            if folded not in info.choices:
                raise ValueError(f"must be one of {', '.join(info.choices)}")
            return folded
        if not text and kind == "opt_str":
            return None
        return text
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                raise ValueError("must be an integer") from None
        raise ValueError("must be an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError("must be a number") from None
        raise ValueError("must be a number")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            folded = value.strip().lower()
            if folded in _TRUE:
                return True
            if folded in _FALSE:
                return False
        raise ValueError("must be a boolean (true/false, yes/no, on/off, 1/0)")
    if kind in ("path", "opt_path"):
        if not isinstance(value, str | os.PathLike):
            raise ValueError("must be a path (string)")
        text = os.fspath(value)
        if isinstance(text, bytes) or not text.strip():
            raise ValueError("must be a non-empty path")
        path = Path(text.strip()).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return path
    if kind == "list":
        if isinstance(value, str):
            return tuple(_split(value))
        if isinstance(value, list | tuple):
            out: list[str] = []
            for item in value:
                if not isinstance(item, str):
                    raise ValueError("must be a list of strings")
                out.extend(_split(item))
            return tuple(out)
        raise ValueError("must be a list of strings (or one comma-separated string)")
    if kind == "price":
        return parse_price(value)
    if kind == "prices":
        return _parse_prices(value)
    raise AssertionError(f"unknown kind {kind}")  # pragma: no cover


def _parse_prices(value: object) -> dict[str, int]:
    items: list[tuple[str, object]] = []
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str | list | tuple):
        parts = _split(value) if isinstance(value, str) else []
        if not isinstance(value, str):
            for item in value:
                if not isinstance(item, str):
                    raise ValueError("must be CAP=PRICE strings")
                parts.extend(_split(item))
        for part in parts:
            cap, sep, price = part.partition("=")
            if not sep or not cap:
                raise ValueError(f"{part!r} is not CAP=PRICE (e.g. python.run=0.005)")
            items.append((cap, price))
    else:
        raise ValueError("must be a table of capability = price, or CAP=PRICE strings")
    out: dict[str, int] = {}
    for capability, amount in items:
        try:
            out[capability.strip()] = parse_price(amount)
        except ValueError as exc:
            raise ValueError(f"{capability}: {exc}") from None
    return out


def _show(info: SettingInfo, raw: object) -> str:
    """A raw value for an error message (never a secret)."""
    if info.secret:
        return _MASK
    if info.name == "nats" and isinstance(raw, str):
        return repr(",".join(redact_url(u) for u in _split(raw)))
    return repr(raw) if not isinstance(raw, Path) else repr(str(raw))


# ----------------------------------------------------------------------------- checks


def _check(s: NodeSettings) -> list[tuple[str, str]]:
    """Problems with individual values (types, ranges, formats), as (setting, message)."""
    problems: list[tuple[str, str]] = []

    def bad(name: str, message: str) -> None:
        problems.append((name, message))

    if s.mode not in MODES:
        bad("mode", f"must be one of {', '.join(MODES)}, got {s.mode!r}")
    for url in s.nats:
        if not isinstance(url, str) or not url.strip():
            bad("nats", "URLs must be non-empty strings")
            continue
        scheme = url.split("://", 1)[0].lower() if "://" in url else "nats"
        if scheme not in ("nats", "tls", "ws", "wss"):
            bad("nats", f"unsupported URL scheme in {redact_url(url)!r}; use nats:// or tls://")
    if not _FED_RE.match(s.federation):
        bad("federation", f"{s.federation!r} must match [A-Za-z0-9_-]{{1,64}}")
    if not s.capabilities:
        bad("capabilities", "offer at least one capability")
    for cap in s.capabilities:
        if not CAPABILITY_RE.match(cap):
            bad(
                "capabilities",
                f"{cap!r} must be dot-separated lower-case tokens of [a-z0-9_-]",
            )
    if len(set(s.capabilities)) != len(s.capabilities):
        bad("capabilities", "lists a capability twice")
    if isinstance(s.price, bool) or not isinstance(s.price, int) or s.price < 0:
        bad("price", f"must be a non-negative integer of micro-units, got {s.price!r}")
    for cap, price in s.prices.items():
        if not CAPABILITY_RE.match(cap):
            bad("prices", f"{cap!r} is not a capability name")
        if isinstance(price, bool) or not isinstance(price, int) or price < 0:
            bad("prices", f"{cap}: must be a non-negative integer of micro-units")
    if not _CURRENCY_RE.match(s.currency):
        bad("currency", f"{s.currency!r} must be 3-8 upper-case letters/digits, e.g. USD")
    _int_at_least(bad, "max_concurrency", s.max_concurrency, 1, 64)
    _int_at_least(bad, "queue_depth", s.queue_depth, 0, 1_000_000)
    _int_at_least(bad, "bid_valid_ms", s.bid_valid_ms, 1, 3_600_000)
    _int_at_least(bad, "quote_valid_ms", s.quote_valid_ms, 1, 120_000)
    if s.directory not in ("bucket", "subject"):
        bad("directory", f"must be bucket or subject, got {s.directory!r}")
    if s.originate not in ("auto", "always", "never"):
        bad("originate", f"must be auto, always or never, got {s.originate!r}")
    _int_at_least(bad, "metrics_port", s.metrics_port, 0, 65535)
    _int_at_least(bad, "receipts_replicas", s.receipts_replicas, 1, 5)  # JetStream's limit
    if not isinstance(s.max_job_timeout_s, int | float) or not (
        0.001 <= s.max_job_timeout_s <= 86_400
    ):
        bad("max_job_timeout_s", f"must be seconds in [0.001, 86400], got {s.max_job_timeout_s!r}")
    _int_at_least(bad, "max_job_memory_mb", s.max_job_memory_mb, 1, 1 << 24)
    _int_at_least(bad, "default_job_memory_mb", s.default_job_memory_mb, 1, 1 << 24)
    if (
        isinstance(s.default_job_memory_mb, int)
        and isinstance(s.max_job_memory_mb, int)
        and (s.default_job_memory_mb > s.max_job_memory_mb)
    ):
        bad("default_job_memory_mb", "must not exceed max_job_memory_mb")
    _int_at_least(bad, "max_job_cpu_s", s.max_job_cpu_s, 1, 86_401)
    _int_at_least(bad, "max_job_output_bytes", s.max_job_output_bytes, 0, 1 << 30)
    _int_at_least(bad, "max_job_disk_mb", s.max_job_disk_mb, 0, 1 << 30)
    _int_at_least(bad, "max_total_memory_mb", s.max_total_memory_mb, 0, 1 << 30)
    _int_at_least(bad, "max_total_disk_mb", s.max_total_disk_mb, 0, 1 << 30)
    if (
        isinstance(s.price_per_gib_s, bool)
        or not isinstance(s.price_per_gib_s, int)
        or (s.price_per_gib_s < 0)
    ):
        bad("price_per_gib_s", "must be a non-negative integer of micro-units")
    for name, message in advert_timing_problems(s.advert_interval_s, s.advert_ttl_s):
        bad(name, message)
    if not isinstance(s.drain_grace_s, int | float) or not 0 <= s.drain_grace_s <= 86_400:
        bad("drain_grace_s", f"must be a number of seconds in [0, 86400], got {s.drain_grace_s!r}")
    if not isinstance(s.metrics_host, str) or not s.metrics_host.strip():
        bad("metrics_host", "must be a host name or address")
    if s.log_format not in ("json", "console"):
        bad("log_format", f"must be json or console, got {s.log_format!r}")
    if s.log_level not in _LOG_LEVELS:
        bad("log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}")
    for did in s.trust:
        try:
            public_key_from_did(did)
        except InvalidDID:
            bad("trust", f"{did!r:.80} is not an Ed25519 did:key")
    if not s.sandbox_profiles:
        bad("sandbox_profiles", "name at least one env profile (e.g. python-core)")
    if s.isolation_min is not None and s.isolation_min not in _ISOLATION_LEVELS:
        bad("isolation_min", f"must be one of {', '.join(_ISOLATION_LEVELS)}")
    if s.nats_token is not None and (s.nats_user is not None or s.nats_password is not None):
        bad("nats_token", "give either a token or nats_user/nats_password, not both")
    if s.nats_password is not None and s.nats_user is None:
        bad("nats_password", "needs nats_user")
    if s.nats_user is not None and s.nats_password is None and s.nats_token is None:
        bad("nats_user", "needs nats_password")
    if s.tls_key_file is not None and s.tls_cert_file is None:
        bad("tls_key_file", "needs tls_cert_file (the matching certificate)")
    if s.tls_cert_file is not None and s.tls_key_file is None:
        bad("tls_cert_file", "needs tls_key_file (its private key)")
    return problems


def _int_at_least(bad: Any, name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bad(name, f"must be an integer in [{low}, {high}], got {value!r}")


# ----------------------------------------------------------------------------- loading


def _home(env: Mapping[str, str]) -> Path:
    base = env.get(ENV_HOME) or os.path.join(Path.home(), ".crankmesh")
    return Path(base).expanduser()


def _truthy(text: str | None) -> bool:
    folded = (text or "").strip().lower()
    return bool(folded) and folded not in _FALSE


def detect_mode(env: Mapping[str, str] = os.environ) -> Mode:
    """``CRANKMESH_ENV`` when set (``development``/``dev``, ``production``/``prod``);
    otherwise ``production`` when ``CI`` is truthy, else ``development``.

    Raises :class:`ConfigError` for any other ``CRANKMESH_ENV`` value.
    """
    raw = env.get(ENV_MODE, "").strip()
    if raw:
        mode = _MODE_ALIASES.get(raw.lower())
        if mode is None:
            raise ConfigError([f"{ENV_MODE}={raw!r}: must be development or production"])
        return mode
    return "production" if _truthy(env.get("CI")) else "development"


def _defaults(mode: Mode, env: Mapping[str, str]) -> dict[str, Any]:
    production = mode == "production"
    return {
        "state_dir": _home(env),
        "metrics_port": 9464 if production else 0,
        "log_format": "json" if production else "console",
    }


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (not ``os.environ``),
    reading only the exact upper-case variable names of :data:`SETTINGS`; a value of
    blanks counts as unset."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = {k: v for k, v in env.items() if k in _ENV_TO_NAME and v.strip()}
        super().__init__(NodeSettings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _problems_of(exc: ValidationError, sources: Mapping[str, str]) -> list[str]:
    """pydantic's errors as crankmesh's one-line problems (``name: message (from ...)``)."""
    problems = []
    for err in exc.errors(include_input=False):
        loc = str(err["loc"][0]) if err["loc"] else ""
        name = _ENV_TO_NAME.get(loc, loc)
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r}{_suggest(name)}")
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        source = sources.get(name, "default")
        shown = "" if source.startswith("default") else f" (from {source})"
        problems.append(f"{name}: {message}{shown}")
    return problems


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] = os.environ,
    file: str | os.PathLike[str] | None = None,
) -> NodeSettings:
    """Build the effective :class:`NodeSettings`: flags > env > TOML file > defaults.

    ``flags`` maps setting names (:data:`SETTINGS`) to values; ``None`` means not given.
    ``file`` defaults to ``$CRANKMESH_CONFIG`` when that is set; a named file must exist.
    Raises :class:`ConfigError` listing every problem found.
    """
    problems: list[str] = []
    warnings: list[str] = []
    layers: list[tuple[str, dict[str, Any], dict[str, str]]] = []  # (kind, values, sources)

    # flags
    flag_values: dict[str, Any] = {}
    flag_sources: dict[str, str] = {}
    for name, raw in (flags or {}).items():
        info = SETTINGS.get(name)
        if info is None:
            problems.append(f"unknown setting {name!r} in flags{_suggest(name)}")
            continue
        if raw is None:
            continue
        try:
            flag_values[name] = _parse(info, raw)
        except ValueError as exc:
            problems.append(f"{name}: {info.flags[0]} {_show(info, raw)}: {exc}")
            continue
        flag_sources[name] = f"flag {info.flags[0]}"

    # environment: read by pydantic-settings' env source (the variables named in SETTINGS)
    env_values: dict[str, Any] = {}
    env_sources: dict[str, str] = {}
    for var in env:
        if var.startswith(_ENV_PREFIX) and var not in _ENV_OTHER and var not in _ENV_TO_NAME:
            close = difflib.get_close_matches(var, list(_ENV_TO_NAME), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"ignored unknown environment variable {var}{hint}")
    for key, raw in _EnvSource(env)().items():
        setting = _ENV_TO_NAME.get(key, key)
        info = SETTINGS[setting]
        try:
            env_values[setting] = _parse(info, raw)
        except ValueError as exc:
            problems.append(f"{setting}: {info.env}={_show(info, raw)}: {exc}")
            continue
        env_sources[setting] = f"env {info.env}"

    # file
    path: Path | None = None
    if file is not None:
        path = Path(file).expanduser()
    elif env.get(ENV_CONFIG, "").strip():
        path = Path(env[ENV_CONFIG].strip()).expanduser()
    file_values: dict[str, Any] = {}
    file_sources: dict[str, str] = {}
    if path is not None:
        file_values, file_problems = _read_file(path)
        problems.extend(file_problems)
        file_sources = {name: f"file {path}" for name in file_values}

    if problems:
        raise ConfigError(problems)

    layers = [
        ("flag", flag_values, flag_sources),
        ("env", env_values, env_sources),
        ("file", file_values, file_sources),
    ]

    # mode first: it picks the defaults
    mode: Mode | None = None
    sources: dict[str, str] = {}
    for _kind, values, srcs in layers:
        if "mode" in values:
            mode = cast(Mode, values["mode"])
            sources["mode"] = srcs["mode"]
            break
    if mode is None:
        mode = detect_mode(env)
        sources["mode"] = "default (CI is set)" if mode == "production" else "default"

    merged: dict[str, Any] = dict(_defaults(mode, env))
    merged["mode"] = mode
    prices: dict[str, int] = {}
    price_sources: list[str] = []
    for _kind, values, srcs in reversed(layers):  # lowest first; later updates win
        if "prices" in values:
            prices.update(values["prices"])
            price_sources.append(srcs["prices"])
    merged["prices"] = prices
    if price_sources:
        sources["prices"] = ", ".join(reversed(price_sources))
    for name in SETTINGS:
        if name in ("mode", "prices"):
            continue
        for _kind, values, srcs in layers:
            if name in values:
                merged[name] = values[name]
                sources[name] = srcs[name]
                break
        else:
            sources[name] = "default"
    if merged.get("key") is None:
        merged["key"] = Path(merged["state_dir"]) / "node.key"
        sources["key"] = "default (<state_dir>/node.key)"
    elif sources["state_dir"] == "default":
        # A node started with only --key keeps its state next to its key, so that several
        # nodes on one machine (one key directory each) never share a receipt chain.
        merged["state_dir"] = Path(merged["key"]).parent
        sources["state_dir"] = "default (the key file's directory)"
    return NodeSettings(**merged, sources=sources, warnings=tuple(warnings))


def _read_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    where = f"config file {path}"
    if not path.exists():
        return {}, [f"{where} does not exist"]
    try:  # pydantic-settings' TOML source (it skips a missing file: checked above)
        doc = TomlConfigSettingsSource(NodeSettings, toml_file=path).toml_data
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{where} is not valid TOML: {exc}"]
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"cannot read {where}: {exc}"]
    values: dict[str, Any] = {}
    problems: list[str] = []
    base = path.parent.resolve()
    for key, raw in doc.items():
        info = SETTINGS.get(key)
        if info is None:
            problems.append(f"{where}: unknown key {key!r}{_suggest(key)}")
            continue
        if isinstance(raw, dict) and info.kind != "prices":
            problems.append(f"{where}: {key} must be a value, not a table")
            continue
        try:
            values[key] = _parse(info, raw, base=base)
        except ValueError as exc:
            problems.append(f"{where}: {key} = {_show(info, raw)}: {exc}")
    return values, problems


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(SETTINGS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(SETTINGS)}"


# ----------------------------------------------------------------------------- trust


def load_trust_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The DIDs in a trust file: one per line; blank lines and ``#`` comments ignored.

    Raises :class:`ConfigError` for an unreadable file or a line that is not a did:key.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"trust_file: cannot read {p}: {exc}"]) from None
    dids: list[str] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        did = line.split("#", 1)[0].strip()
        if not did:
            continue
        try:
            public_key_from_did(did)
        except InvalidDID:
            problems.append(f"trust_file: {p}:{lineno}: {did!r:.80} is not an Ed25519 did:key")
            continue
        dids.append(did)
    if problems:
        raise ConfigError(problems)
    return tuple(dict.fromkeys(dids))


def trusted_dids(settings: NodeSettings) -> frozenset[str]:
    """``trust`` plus the DIDs in ``trust_file``; empty means "trust everyone"."""
    dids = set(settings.trust)
    if settings.trust_file is not None:
        dids.update(load_trust_file(settings.trust_file))
    return frozenset(dids)


# ----------------------------------------------------------------------------- validation


def validate_for_mode(settings: NodeSettings) -> list[str]:
    """Every reason the daemon must not start with ``settings``, one sentence each.

    Both modes: every file named must exist, sandbox profiles must be known, a key file
    that exists must be readable by its owner only, the trust file must parse.
    Production also needs: an existing identity key file (production never generates
    one), NATS URL(s) (no embedded server), TLS (a ``tls://`` URL or ``tls_ca_file``)
    and/or credentials (creds, nkey seed, token, or user + password), and a non-empty
    trust list. An empty list means the settings are acceptable.
    """
    s = settings
    problems: list[str] = []
    prod = s.is_production

    for name in (
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "nats_creds_file",
        "nats_nkey_seed_file",
    ):
        path = getattr(s, name)
        if path is not None and not path.is_file():
            problems.append(s._where(name, f"no such file: {path}"))

    key = s.key_file
    if key.exists():
        try:
            mode = key.stat().st_mode
        except OSError as exc:
            problems.append(s._where("key", f"cannot stat {key}: {exc.strerror}"))
        else:
            if not stat.S_ISREG(mode):
                problems.append(s._where("key", f"{key} is not a regular file"))
            elif mode & 0o077:
                problems.append(
                    s._where(
                        "key",
                        f"key file {key} has mode {stat.S_IMODE(mode):04o}; it must not be "
                        f"accessible by group or others (run `chmod 600 {key}`)",
                    )
                )
    elif prod:
        problems.append(
            s._where(
                "key",
                f"production mode needs an existing identity key file and there is none at "
                f"{key}; create one with `crankmesh identity new --out {key}` or point "
                "--key / CRANKMESH_KEY at yours (production never generates keys)",
            )
        )

    if _SANDBOXED_CAPABILITY in s.capabilities:
        from .executor.sandbox._sandbox import KNOWN_PROFILES

        unknown = [p for p in s.sandbox_profiles if p not in KNOWN_PROFILES]
        if unknown:
            problems.append(
                s._where(
                    "sandbox_profiles",
                    f"unknown env profiles {unknown}; known: {list(KNOWN_PROFILES)}",
                )
            )

    dids: frozenset[str] = frozenset(s.trust)
    try:
        dids = trusted_dids(s)
    except ConfigError as exc:
        problems.extend(exc.problems)

    if prod:
        if not s.nats:
            problems.append(
                s._where(
                    "nats",
                    "production mode needs NATS server URL(s) (--nats / CRANKMESH_NATS / "
                    "nats = [...]); the embedded nats-server is for development only",
                )
            )
        tls = any(u.lower().startswith(("tls://", "wss://")) for u in s.nats) or (
            s.tls_ca_file is not None
        )
        creds = (
            s.nats_creds_file is not None
            or s.nats_nkey_seed_file is not None
            or s.nats_token is not None
            or (s.nats_user is not None and s.nats_password is not None)
        )
        if not (tls or creds):
            problems.append(
                "nats security: production mode needs TLS (a tls:// URL or tls_ca_file / "
                "CRANKMESH_TLS_CA_FILE) and/or NATS credentials (nats_creds_file, "
                "nats_nkey_seed_file, nats_token, or nats_user + nats_password)"
            )
        if not dids:
            problems.append(
                "trust: production mode needs a non-empty trust list of peer DIDs "
                "(trust = [...] / CRANKMESH_TRUST / --trust, or trust_file / "
                "CRANKMESH_TRUST_FILE with one DID per line)"
            )
    return problems


# ----------------------------------------------------------------------------- CLI glue


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per setting to ``parser`` (dest = setting name, default ``None``),
    plus ``--config FILE`` (dest ``config``) and ``--print-config`` (dest ``print_config``).

    Lists and ``--capability-price`` may be repeated; ``--log-json`` is kept as a
    shorthand for ``--log-format json``. Values stay strings: :func:`load_settings`
    parses them, so errors name the flag and the precedence stays exact.
    """
    for info in SETTINGS.values():
        help_text = f"{info.help} [env {info.env}]"
        if info.kind == "bool":
            parser.add_argument(
                *info.flags,
                dest=info.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif info.kind in ("list", "prices"):
            metavar = "CAP=PRICE" if info.kind == "prices" else "A,B"
            parser.add_argument(
                *info.flags,
                dest=info.name,
                action="append",
                default=None,
                metavar=metavar,
                help=help_text,
            )
        else:
            parser.add_argument(
                *info.flags,
                dest=info.name,
                default=None,
                metavar=info.name.upper(),
                help=help_text,
            )
    parser.add_argument(
        "--log-json",
        dest="log_format",
        action="store_const",
        const="json",
        help="shorthand for --log-format json",
    )
    parser.add_argument(
        "--config",
        dest="config",
        default=None,
        metavar="FILE",
        help=f"TOML settings file [env {ENV_CONFIG}]",
    )
    parser.add_argument(
        "--print-config",
        dest="print_config",
        action="store_true",
        help="print the effective settings (secrets masked) and where each came from, "
        "list any problems for the mode, and exit (0 if none)",
    )


def flags_from_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The setting values in parsed arguments (other attributes are left out)."""
    items = vars(args) if isinstance(args, argparse.Namespace) else args
    return {k: v for k, v in items.items() if k in SETTINGS and v is not None}


# ----------------------------------------------------------------------------- printing


def _plain(value: Any, *, secret: bool, redact: bool = True) -> Any:
    if value is None:
        return None
    if secret and redact:
        return _MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, secret=False, redact=redact) for k, v in sorted(value.items())}
    if isinstance(value, tuple | list):
        return [redact_url(v) if redact and isinstance(v, str) else v for v in value]
    return value


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")  # pragma: no cover
