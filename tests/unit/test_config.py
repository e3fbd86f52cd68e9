"""Node settings: precedence, env parsing, TOML errors, mode detection, production checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pydantic
import pytest

from crankmesh.config import (
    SETTINGS,
    ConfigError,
    NodeSettings,
    add_node_arguments,
    detect_mode,
    flags_from_args,
    load_settings,
    load_trust_file,
    parse_price,
    trusted_dids,
    validate_for_mode,
)
from crankmesh.keystore import save_identity
from crankmesh.protocol.identity import Identity

DID_A = Identity.from_seed(bytes(32)).did
DID_B = Identity.from_seed(bytes([1]) * 32).did
BASE_ENV = {"CRANKMESH_HOME": "/nonexistent/crankmesh-home"}


def load(flags=None, env=None, file=None) -> NodeSettings:
    return load_settings(flags=flags, env={**BASE_ENV, **(env or {})}, file=file)


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def key_file(tmp_path: Path) -> Path:
    return save_identity(Identity.generate(), tmp_path / "keys" / "node.key")


# ----------------------------------------------------------------------------- precedence


def test_defaults_are_zero_config_development() -> None:
    s = load()
    assert s.mode == "development" and s.embedded_nats
    assert s.key_file == Path("/nonexistent/crankmesh-home/node.key")
    assert s.state_dir == Path("/nonexistent/crankmesh-home")
    assert s.log_format == "console" and s.metrics_port == 0
    assert s.capabilities == ("echo", "python.run") and s.price == 1000
    assert s.sources["nats"] == "default"


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    f = write(tmp_path, 'federation = "from-file"\nname = "file"\nregion = "file"\n')
    env = {"CRANKMESH_FEDERATION": "from-env", "CRANKMESH_NAME": "env"}
    s = load(flags={"federation": "from-flag", "name": None}, env=env, file=f)
    assert s.federation == "from-flag"  # flag wins
    assert s.name == "env"  # flag None = not given, so env wins
    assert s.region == "file"  # only in the file
    assert s.currency == "USD"  # only the default
    assert s.sources["federation"] == "flag --federation"
    assert s.sources["name"] == "env CRANKMESH_NAME"
    assert s.sources["region"] == f"file {f}"


def test_prices_merge_per_capability_across_layers(tmp_path: Path) -> None:
    f = write(tmp_path, '[prices]\n"python.run" = "0.005"\necho = 1500\n')
    s = load(flags={"prices": ["echo=0.003"]}, env={"CRANKMESH_PRICES": "gpu.infer=9"}, file=f)
    assert dict(s.prices) == {"python.run": 5000, "echo": 3000, "gpu.infer": 9}
    assert s.price_for("echo") == 3000 and s.price_for("other") == s.price


def test_state_dir_and_key_default_to_each_other(tmp_path: Path) -> None:
    s = load(env={"CRANKMESH_STATE_DIR": str(tmp_path)})
    assert s.key_file == tmp_path / "node.key"
    # only a key: the state lives next to it (one directory per node on a shared machine)
    s = load(flags={"key": str(tmp_path / "a" / "node.key")})
    assert s.key_file == tmp_path / "a" / "node.key" and s.state_dir == tmp_path / "a"
    # both given: both kept
    s = load(flags={"key": str(tmp_path / "k")}, env={"CRANKMESH_STATE_DIR": "/srv/state"})
    assert s.key_file == tmp_path / "k" and s.state_dir == Path("/srv/state")


# ----------------------------------------------------------------------------- env parsing


def test_env_strings_are_parsed_by_type() -> None:
    s = load(
        env={
            "CRANKMESH_NATS": "nats://a:4222, nats://b:4222,nats://c:4222",
            "CRANKMESH_CAPABILITIES": "echo,python.run",
            "CRANKMESH_MAX_CONCURRENCY": "4",
            "CRANKMESH_ADVERT_INTERVAL_S": "0.5",
            "CRANKMESH_METRICS_ENABLED": "off",
            "CRANKMESH_PRICE": "0.002",
            "CRANKMESH_PRICES": "python.run=5000, echo=0.0015",
            "CRANKMESH_TRUST": f"{DID_A},{DID_B}",
            "CRANKMESH_LOG_LEVEL": "debug",
            "CRANKMESH_ISOLATION_MIN": "Standard",
        }
    )
    assert s.nats == ("nats://a:4222", "nats://b:4222", "nats://c:4222")
    assert s.max_concurrency == 4 and s.advert_interval_s == 0.5
    assert s.metrics_enabled is False
    assert s.price == 2000 and dict(s.prices) == {"python.run": 5000, "echo": 1500}
    assert s.trust == (DID_A, DID_B)
    assert s.log_level == "DEBUG" and s.isolation_min == "standard"


@pytest.mark.parametrize(
    ("text", "micros"),
    [("2000", 2000), ("0.002", 2000), ("1.5e-3", 1500), ("0", 0), (7, 7), (0.25, 250_000)],
)
def test_prices_are_micro_units_or_decimal_units(text: object, micros: int) -> None:
    assert parse_price(text) == micros


@pytest.mark.parametrize("bad", ["-1", "abc", "0.0000001", "nan", True, None])
def test_bad_prices_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_price(bad)


def test_empty_env_values_count_as_unset() -> None:
    s = load(env={"CRANKMESH_NAME": "", "CRANKMESH_NATS": "  "})
    assert s.name is None and s.nats == ()


def test_every_bad_env_value_is_reported_with_its_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load(
            env={
                "CRANKMESH_MAX_CONCURRENCY": "two",
                "CRANKMESH_METRICS_ENABLED": "maybe",
                "CRANKMESH_PRICE": "-1",
                "CRANKMESH_LOG_FORMAT": "xml",
            }
        )
    text = str(info.value)
    assert len(info.value.problems) == 4
    for var in ("MAX_CONCURRENCY", "METRICS_ENABLED", "PRICE", "LOG_FORMAT"):
        assert f"CRANKMESH_{var}" in text


def test_range_errors_name_the_setting_and_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"CRANKMESH_MAX_CONCURRENCY": "0", "CRANKMESH_FEDERATION": "a.b"})
    text = str(info.value)
    assert "max_concurrency" in text and "(from env CRANKMESH_MAX_CONCURRENCY)" in text
    assert "federation" in text


def test_an_advert_ttl_peers_would_drop_is_refused() -> None:
    # Peers drop adverts that claim to live longer than 120 s (RFC 0001 §7): such a node
    # would be invisible, so the configuration is refused up front.
    with pytest.raises(ConfigError, match=r"advert_ttl_s.*\(0, 120\]"):
        load(env={"CRANKMESH_ADVERT_TTL_S": "600", "CRANKMESH_ADVERT_INTERVAL_S": "60"})
    assert load(env={"CRANKMESH_ADVERT_TTL_S": "120"}).advert_ttl_s == 120


def test_node_config_refuses_advert_timings_peers_cannot_follow() -> None:
    from crankmesh.node import NodeConfig

    for interval, ttl in ((1.0, 600.0), (10.0, 5.0), (0.0, 5.0)):
        with pytest.raises(ConfigError, match="advert timings"):
            NodeConfig(advert_interval_s=interval, advert_ttl_s=ttl)
    assert NodeConfig(advert_interval_s=60.0, advert_ttl_s=120.0).advert_ttl_s == 120.0


def test_unknown_env_variables_are_warnings_not_errors() -> None:
    s = load(env={"CRANKMESH_MAX_CONCURENCY": "3", "CRANKMESH_CONFIG": ""})
    assert s.max_concurrency == 2
    assert any(
        "CRANKMESH_MAX_CONCURENCY" in w and "CRANKMESH_MAX_CONCURRENCY" in w for w in s.warnings
    )


def test_secrets_never_appear_in_errors_repr_or_printouts() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"CRANKMESH_NATS_TOKEN": "s3cret-token", "CRANKMESH_NATS_USER": "alice"})
    assert "s3cret-token" not in str(info.value)
    s = load(
        env={
            "CRANKMESH_NATS": "nats://bob:hunter2@h:4222",
            "CRANKMESH_NATS_USER": "alice",
            "CRANKMESH_NATS_PASSWORD": "pw-secret",
        }
    )
    for text in (repr(s), str(s.redacted()), s.to_toml()):
        assert "hunter2" not in text and "pw-secret" not in text
    assert s.redacted()["nats_password"] == "***"
    assert s.redacted()["nats"] == ["nats://***@h:4222"]
    assert "pw-secret" in s.to_toml(redact=False)


# ----------------------------------------------------------------------------- TOML


def test_toml_file_with_every_kind_of_value(tmp_path: Path) -> None:
    (tmp_path / "trusted").write_text(f"# peers\n{DID_A}\n\n{DID_B}  # the other one\n")
    f = write(
        tmp_path,
        f"""
mode = "production"
nats = ["tls://n1:4222", "tls://n2:4222"]
tls_ca_file = "ca.pem"
key = "~/k/node.key"
capabilities = ["echo"]
price = 0.001
max_concurrency = 3
drain_grace_s = 5
metrics_enabled = false
trust = ["{DID_A}"]
trust_file = "trusted"
""",
    )
    s = load(file=f)
    assert s.mode == "production"
    assert s.tls_ca_file == tmp_path / "ca.pem"  # relative to the file's directory
    assert s.key_file == Path("~/k/node.key").expanduser()
    assert s.price == 1000 and s.max_concurrency == 3 and s.drain_grace_s == 5.0
    assert s.metrics_enabled is False
    assert s.log_format == "json" and s.metrics_port == 9464  # production defaults
    assert trusted_dids(s) == {DID_A, DID_B}


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    f = write(tmp_path, 'name = "via-env"\n')
    assert load(env={"CRANKMESH_CONFIG": str(f)}).name == "via-env"


def test_unknown_toml_keys_are_errors_with_a_suggestion(tmp_path: Path) -> None:
    f = write(tmp_path, 'max_concurency = 3\nfederaton = "x"\n[metrics]\nport = 1\n')
    with pytest.raises(ConfigError) as info:
        load(file=f)
    text = str(info.value)
    assert "unknown key 'max_concurency'" in text and "did you mean 'max_concurrency'" in text
    assert "'federaton'" in text and "'metrics'" in text
    assert str(f) in text


def test_toml_type_and_syntax_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_concurrency = 'two': must be an integer"):
        load(file=write(tmp_path, 'max_concurrency = "two"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(file=write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match="name must be a value, not a table"):
        load(file=write(tmp_path, "[name]\nx = 1\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load(file=tmp_path / "missing.toml")


def test_to_toml_round_trips(tmp_path: Path) -> None:
    s = load(
        flags={"prices": "python.run=0.005", "name": "n1", "trust": [DID_A]},
        env={"CRANKMESH_NATS": "nats://a:4222", "CRANKMESH_NATS_TOKEN": "tok"},
    )
    f = write(tmp_path, s.to_toml(redact=False))
    again = load_settings(flags=None, env={}, file=f)
    assert again == s
    assert again.nats_token == "tok"


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "development"),
        ({"CI": "true"}, "production"),
        ({"CI": "1"}, "production"),
        ({"CI": "false"}, "development"),
        ({"CI": ""}, "development"),
        ({"CI": "true", "CRANKMESH_ENV": "development"}, "development"),
        ({"CRANKMESH_ENV": "prod"}, "production"),
        ({"CRANKMESH_ENV": "Production"}, "production"),
        ({"CRANKMESH_ENV": "dev"}, "development"),
    ],
)
def test_mode_detection(env: dict[str, str], mode: str) -> None:
    assert detect_mode(env) == mode
    assert load(env=env).mode == mode


def test_invalid_mode_is_an_error() -> None:
    with pytest.raises(ConfigError, match="CRANKMESH_ENV"):
        detect_mode({"CRANKMESH_ENV": "staging"})
    with pytest.raises(ConfigError, match="mode"):
        load(env={"CRANKMESH_ENV": "staging"})


def test_explicit_mode_flag_beats_env_and_picks_defaults() -> None:
    s = load(flags={"mode": "production"}, env={"CRANKMESH_ENV": "development"})
    assert s.mode == "production" and s.log_format == "json" and s.metrics_port == 9464
    s = load(flags={"mode": "production", "log_format": "console", "metrics_port": "0"})
    assert s.log_format == "console" and s.metrics_port == 0


# ----------------------------------------------------------------------------- validation


def test_development_needs_nothing() -> None:
    assert validate_for_mode(load()) == []


def test_production_names_every_missing_thing() -> None:
    problems = validate_for_mode(load(env={"CRANKMESH_ENV": "production"}))
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "identity key file" in text and "crankmesh identity new --out" in text
    assert "NATS server URL(s)" in text and "embedded" in text
    assert "TLS" in text and "credentials" in text
    assert "trust list" in text


def test_production_is_satisfied_by_tls_or_credentials(tmp_path: Path) -> None:
    key = key_file(tmp_path)
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "node.creds").write_text("x")
    base = {"CRANKMESH_ENV": "production", "CRANKMESH_KEY": str(key), "CRANKMESH_TRUST": DID_A}
    for extra in (
        {"CRANKMESH_NATS": "tls://nats:4222"},
        {"CRANKMESH_NATS": "nats://nats:4222", "CRANKMESH_TLS_CA_FILE": str(tmp_path / "ca.pem")},
        {
            "CRANKMESH_NATS": "nats://n:4222",
            "CRANKMESH_NATS_CREDS_FILE": str(tmp_path / "node.creds"),
        },
        {"CRANKMESH_NATS": "nats://n:4222", "CRANKMESH_NATS_TOKEN": "t"},
        {
            "CRANKMESH_NATS": "nats://n:4222",
            "CRANKMESH_NATS_USER": "u",
            "CRANKMESH_NATS_PASSWORD": "p",
        },
    ):
        assert validate_for_mode(load(env={**base, **extra})) == [], extra
    problems = validate_for_mode(load(env={**base, "CRANKMESH_NATS": "nats://n:4222"}))
    assert len(problems) == 1 and "TLS" in problems[0]


def test_trust_file_alone_satisfies_production(tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.write_text(f"{DID_B}\n")
    s = load(
        env={
            "CRANKMESH_ENV": "production",
            "CRANKMESH_KEY": str(key_file(tmp_path)),
            "CRANKMESH_NATS": "tls://n:4222",
            "CRANKMESH_TRUST_FILE": str(trust),
        }
    )
    assert validate_for_mode(s) == [] and trusted_dids(s) == {DID_B}


def test_missing_files_and_bad_trust_files_are_problems_in_any_mode(tmp_path: Path) -> None:
    bad_trust = tmp_path / "trusted"
    bad_trust.write_text(f"{DID_A}\nnot-a-did\n")
    s = load(
        env={
            "CRANKMESH_TLS_CA_FILE": str(tmp_path / "nope.pem"),
            "CRANKMESH_TRUST_FILE": str(bad_trust),
        }
    )
    text = "\n".join(validate_for_mode(s))
    assert "tls_ca_file" in text and "nope.pem" in text
    assert f"{bad_trust}:2" in text and "not-a-did" in text
    with pytest.raises(ConfigError):
        load_trust_file(bad_trust)
    with pytest.raises(ConfigError, match="cannot read"):
        load_trust_file(tmp_path / "missing")


def test_an_unsafe_key_file_is_a_problem(tmp_path: Path) -> None:
    key = key_file(tmp_path)
    os.chmod(key, 0o644)
    problems = validate_for_mode(load(flags={"key": str(key)}))
    assert len(problems) == 1 and f"chmod 600 {key}" in problems[0]


def test_invalid_trusted_did_and_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="not an Ed25519 did:key"):
        load(env={"CRANKMESH_TRUST": "did:key:zNOPE"})
    problems = validate_for_mode(load(env={"CRANKMESH_SANDBOX_PROFILES": "python-gpu"}))
    assert len(problems) == 1 and "python-gpu" in problems[0]


def test_inconsistent_credentials_are_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load(
            env={
                "CRANKMESH_NATS_TOKEN": "t",
                "CRANKMESH_NATS_USER": "u",
                "CRANKMESH_TLS_KEY_FILE": "/k",
            }
        )
    text = str(info.value)
    assert "nats_token" in text and "tls_key_file" in text


# ----------------------------------------------------------------------------- CLI glue


def test_argparse_flags_feed_load_settings() -> None:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    args = parser.parse_args(
        [
            "--nats", "nats://a:4222,nats://b:4222",
            "--capabilities", "echo",
            "--price", "0.002",
            "--capability-price", "echo=1500",
            "--capability-price", "python.run=0.01",
            "--grace", "3",
            "--log-json",
            "--no-metrics",
            "--trust", DID_A, "--trust", DID_B,
        ]
    )  # fmt: skip
    flags = flags_from_args(args)
    s = load(flags=flags, env={"CRANKMESH_PRICE": "5"})
    assert s.nats == ("nats://a:4222", "nats://b:4222") and s.capabilities == ("echo",)
    assert s.price == 2000 and dict(s.prices) == {"echo": 1500, "python.run": 10_000}
    assert s.drain_grace_s == 3.0 and s.log_format == "json" and s.metrics_enabled is False
    assert s.trust == (DID_A, DID_B)
    # nothing given: every setting comes from lower layers
    assert flags_from_args(parser.parse_args([])) == {}
    assert set(flags_from_args(vars(args))) <= set(SETTINGS)


def test_unknown_flag_names_are_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'federation'"):
        load(flags={"federaton": "x"})


# ----------------------------------------------------------------------------- wiring


def test_builders_for_nats_executor_and_node(tmp_path: Path) -> None:
    s = load(
        env={
            "CRANKMESH_NATS": "tls://a:4222",
            "CRANKMESH_TLS_CA_FILE": "/etc/ca.pem",
            "CRANKMESH_NATS_TOKEN": "t",
            "CRANKMESH_NAME": "n1",
            "CRANKMESH_PRICES": "echo=7",
            "CRANKMESH_STATE_DIR": str(tmp_path),
        }
    )
    opts = s.nats_options()
    assert opts.servers == ("tls://a:4222",) and opts.tls_ca_file == "/etc/ca.pem"
    assert opts.token == "t" and opts.name == "n1"
    assert s.nats_options(["nats://127.0.0.1:1"]).servers == ("nats://127.0.0.1:1",)
    with pytest.raises(ConfigError, match="no NATS URL"):
        load().nats_options()
    cfg = s.node_config()
    assert cfg.name == "n1" and cfg.state_dir == str(tmp_path)
    assert cfg.executor.price_for("echo") == 7 and cfg.executor.price_for("x") == 1000


def test_settings_are_immutable_and_validated_on_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = NodeSettings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.name = "x"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="max_concurrency"):
        NodeSettings(max_concurrency=0)
    with pytest.raises(ConfigError, match="capabilities"):
        NodeSettings(capabilities=("Bad Cap",))
    with pytest.raises(ConfigError, match="capabilities: must be a sequence of strings"):
        NodeSettings(capabilities="echo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown setting 'max_concurency'.*max_concurrency"):
        NodeSettings(max_concurency=3)  # type: ignore[call-arg]
    assert s.model_copy(update={"name": "x"}).name == "x"
    # direct construction reads no environment (load_settings does)
    monkeypatch.setenv("CRANKMESH_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("CRANKMESH_ENV", "production")
    assert NodeSettings().max_concurrency == 2 and NodeSettings().mode == "development"
    assert NodeSettings(mode="production").mode == "production"


def test_every_setting_is_documented_in_operating_md() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operating.md").read_text()
    for name, info in SETTINGS.items():
        assert f"`{name}`" in doc, f"docs/operating.md does not mention the setting {name}"
        assert f"`{info.env}`" in doc, f"docs/operating.md does not mention {info.env}"
        assert f"`{info.flags[0]}" in doc, f"docs/operating.md does not mention {info.flags[0]}"


# ----------------------------------------------------------------------------- executor caps


def test_executor_caps_come_from_every_layer_and_reach_the_executor(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "max_job_timeout_s = 120\nmax_job_memory_mb = 2048\ndefault_job_memory_mb = 256\n"
        "max_job_cpu_s = 60\nmax_job_output_bytes = 4096\nmax_job_disk_mb = 32\n"
        "max_total_memory_mb = 3000\nmax_total_disk_mb = 90\nprice_per_gib_s = 5\n",
    )
    caps = load(file=path).executor_config().caps
    assert (caps.max_timeout_ms, caps.max_memory_mb, caps.default_memory_mb) == (120_000, 2048, 256)
    assert (caps.max_cpu_s, caps.max_output_bytes, caps.max_disk_mb) == (60, 4096, 32)
    assert (caps.max_total_memory_mb, caps.max_total_disk_mb) == (3000, 90)
    assert load(file=path).executor_config().price_per_gib_s == 5
    s = load(
        flags={"max_job_memory_mb": "1024", "price_per_gib_s": "0.00002"},
        env={"CRANKMESH_MAX_JOB_MEMORY_MB": "512", "CRANKMESH_MAX_JOB_TIMEOUT_S": "2.5"},
        file=path,
    )
    cfg = s.node_config().executor
    assert cfg.caps.max_memory_mb == 1024  # flag > env > file
    assert cfg.caps.max_timeout_ms == 2500  # env > file
    assert cfg.caps.max_cpu_s == 60  # file
    assert cfg.price_per_gib_s == 20
    assert s.sources["max_job_memory_mb"] == "flag --max-job-memory-mb"


def test_directory_and_quote_settings_reach_the_node(tmp_path: Path) -> None:
    path = write(tmp_path, 'quote_valid_ms = 4000\ndirectory = "subject"\noriginate = "never"\n')
    cfg = load(file=path).node_config()
    assert cfg.executor.quote_valid_ms == 4000
    assert (cfg.directory, cfg.originate) == ("subject", "never")
    s = load(flags={"originate": "always"}, env={"CRANKMESH_DIRECTORY": "bucket"}, file=path)
    assert (s.node_config().directory, s.node_config().originate) == ("bucket", "always")
    defaults = load().node_config()
    assert (defaults.directory, defaults.originate) == ("bucket", "auto")
    assert defaults.executor.quote_valid_ms == 15_000


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CRANKMESH_QUOTE_VALID_MS": "0"}, "quote_valid_ms"),
        ({"CRANKMESH_QUOTE_VALID_MS": "999999"}, "quote_valid_ms"),
        ({"CRANKMESH_DIRECTORY": "kv"}, "directory"),
        ({"CRANKMESH_ORIGINATE": "sometimes"}, "originate"),
    ],
)
def test_bad_directory_and_quote_settings_are_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(env=env)


def test_executor_cap_defaults_are_bounded() -> None:
    caps = load().executor_config().caps
    assert caps.max_timeout_ms == 600_000 and caps.max_memory_mb == 4096
    assert caps.default_memory_mb == 1024 and caps.max_cpu_s == 600


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CRANKMESH_MAX_JOB_TIMEOUT_S": "0"}, "max_job_timeout_s"),
        ({"CRANKMESH_MAX_JOB_TIMEOUT_S": "nan"}, "max_job_timeout_s"),
        ({"CRANKMESH_MAX_JOB_TIMEOUT_S": "inf"}, "max_job_timeout_s"),
        ({"CRANKMESH_MAX_JOB_MEMORY_MB": "0"}, "max_job_memory_mb"),
        ({"CRANKMESH_MAX_JOB_CPU_S": "0"}, "max_job_cpu_s"),
        ({"CRANKMESH_MAX_JOB_OUTPUT_BYTES": "-1"}, "max_job_output_bytes"),
        ({"CRANKMESH_MAX_JOB_DISK_MB": "x"}, "max_job_disk_mb"),
        ({"CRANKMESH_MAX_TOTAL_MEMORY_MB": "-1"}, "max_total_memory_mb"),
        ({"CRANKMESH_MAX_TOTAL_DISK_MB": "-1"}, "max_total_disk_mb"),
        ({"CRANKMESH_PRICE_PER_GIB_S": "-3"}, "price_per_gib_s"),
        (
            {"CRANKMESH_MAX_JOB_MEMORY_MB": "100", "CRANKMESH_DEFAULT_JOB_MEMORY_MB": "200"},
            "default_job_memory_mb",
        ),
    ],
)
def test_bad_executor_caps_are_config_errors(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(env=env)


def test_receipts_replicas_reaches_the_node_from_every_layer(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    flags = flags_from_args(parser.parse_args(["--receipts-replicas", "3"]))
    assert load(flags=flags).node_config().receipts_replicas == 3
    assert load(env={"CRANKMESH_RECEIPTS_REPLICAS": "5"}).receipts_replicas == 5
    cfg = tmp_path / "node.toml"
    cfg.write_text("receipts_replicas = 2\n")
    assert load(file=cfg).node_config().receipts_replicas == 2
    assert load().node_config().receipts_replicas == 1
    with pytest.raises(ConfigError, match="receipts_replicas"):
        load(env={"CRANKMESH_RECEIPTS_REPLICAS": "6"})
