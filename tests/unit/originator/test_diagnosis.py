"""Why nobody bid, from the adverts (crankmesh/originator/_diagnosis.py)."""

from __future__ import annotations

from crankmesh.capabilities import MatchOutcome, MatchResult, Mismatch
from crankmesh.directory import Peer
from crankmesh.originator._diagnosis import diagnose
from crankmesh.protocol.cid import cid_for_blob
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Advert, AdvertCapability, Constraints, JobSpec, Load

T0 = 1_700_000_000_000
ORIGINATOR = Identity.from_seed(b"\x01" * 32).did


def peer(
    i: int,
    *,
    price: int = 1000,
    profiles: tuple[str, ...] = ("python-core",),
    isolation: str = "standard",
    memory_mb: int | None = 4096,
    load: Load | None = None,
) -> Peer:
    did = Identity.from_seed(bytes([i + 2]) * 32).did
    hardware: dict[str, object] = {"env_profiles": list(profiles)}
    if memory_mb is not None:
        hardware["memory_mb"] = memory_mb
    advert = Advert(
        signer=did,
        ts=T0,
        exp=T0 + 30_000,
        name=f"node-{i}",
        capabilities=[AdvertCapability(name="python.run", price=price)],
        hardware=hardware,
        load=load or Load(capacity=2),
        isolation=isolation,  # type: ignore[arg-type]
    )
    return Peer(did=did, advert=advert, received_ms=T0)


def spec(**constraints: object) -> JobSpec:
    max_price = constraints.pop("max_price", None)
    return JobSpec(
        capability="python.run",
        originator=ORIGINATOR,
        created=T0,
        nonce=b"\x00" * 16,
        payload=cid_for_blob(b"x"),
        payload_size=1,
        deadline=T0 + 10_000,
        constraints=Constraints(**constraints),  # type: ignore[arg-type]
        max_price=max_price,  # type: ignore[arg-type]
    )


def test_a_compatible_idle_peer_is_not_ruled_out() -> None:
    d = diagnose(spec(env_profile="python-core", max_price=2000), [peer(0)])
    assert not d.ruled_out
    assert d.verdicts[0].reasons == ()
    assert "free capacity" in d.lines()[0]


def test_price_over_max_price_rules_a_peer_out_with_both_figures() -> None:
    d = diagnose(spec(max_price=500), [peer(0, price=2000)])
    assert d.ruled_out
    (line,) = d.lines()
    assert "node-0" in line and "2000 µUSD" in line and "500 µUSD" in line


def test_unsupported_env_profile_names_what_is_offered() -> None:
    d = diagnose(spec(env_profile="python-ml"), [peer(0, profiles=("python-core",))])
    assert d.ruled_out
    assert "python-ml" in d.lines()[0] and "python-core" in d.lines()[0]


def test_isolation_and_memory() -> None:
    d = diagnose(spec(isolation="strict"), [peer(0, isolation="basic")])
    assert d.ruled_out and "'basic'" in d.lines()[0] and "'strict'" in d.lines()[0]
    d = diagnose(spec(memory_mb=8192), [peer(0, memory_mb=1024)])
    assert d.ruled_out and "1024 MiB" in d.lines()[0]


def test_one_suitable_peer_among_unsuitable_ones_means_wait() -> None:
    d = diagnose(spec(max_price=1500), [peer(0, price=2000), peer(1, price=1000)])
    assert not d.ruled_out
    assert [bool(v.reasons) for v in d.verdicts] == [True, False]


def test_no_bid_reasons_rule_out_unless_transient() -> None:
    p = peer(0)
    d = diagnose(spec(), [p], no_bids=[(p.did, "untrusted")], originator=ORIGINATOR)
    assert d.ruled_out and "does not trust" in d.lines()[0] and ORIGINATOR in d.lines()[0]
    d = diagnose(spec(), [p], no_bids=[(p.did, "queue_full")])
    assert not d.ruled_out
    d = diagnose(spec(), [p], no_bids=[(p.did, "unsupported_runtime")])
    assert d.ruled_out and "unsupported_runtime" in d.lines()[0]


def test_hardware_mismatches_from_matching_are_reasons() -> None:
    p = peer(0)
    m = MatchResult(
        outcome=MatchOutcome.INCOMPATIBLE,
        mismatches=(Mismatch("gpu.type", True, "needs a cuda GPU, executor has none"),),
    )
    d = diagnose(spec(), [p], {p.did: m})
    assert d.ruled_out and "cuda" in d.lines()[0]


def test_a_full_peer_reads_as_full() -> None:
    d = diagnose(spec(), [peer(0, load=Load(running=2, capacity=2))])
    assert not d.ruled_out and d.verdicts[0].full and "full" in d.lines()[0]


def test_no_peers_is_not_ruled_out() -> None:
    assert not diagnose(spec(), []).ruled_out
