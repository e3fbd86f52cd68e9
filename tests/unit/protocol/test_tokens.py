"""Budget tokens: issue, delegate with attenuation, verify chains; every defect is named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.protocol.cid import parse_cid
from crankmesh.protocol.encoding import canonical_decode, canonical_encode
from crankmesh.protocol.envelope import Envelope, sign_envelope
from crankmesh.protocol.errors import (
    DecodeError,
    ProtocolError,
    SignatureInvalid,
    TokenInvalid,
    WrongMessageType,
)
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import CAPABILITY_RE
from crankmesh.protocol.tokens import (
    MAX_CHAIN_LINKS,
    MAX_TOKEN_BYTES,
    SCOPE_RE,
    TOKEN_TYPE,
    Token,
    TokenGrant,
    decode_chain,
    decode_token,
    delegate,
    encode_chain,
    issue,
    scope_covers,
    scope_within,
    verify_chain,
)

NOW = 1_790_000_000_000
HOUR = 3_600_000
TREASURY = Identity.from_seed(bytes([1]) * 32)
ALICE = Identity.from_seed(bytes([2]) * 32)
BOB = Identity.from_seed(bytes([3]) * 32)
CAROL = Identity.from_seed(bytes([4]) * 32)
MALLORY = Identity.from_seed(bytes([5]) * 32)


def _root(**kw: Any) -> Envelope:
    args: dict[str, Any] = {
        "audience": ALICE.did,
        "scope": "python.*",
        "amount": 5_000_000,
        "currency": "USD",
        "ttl_ms": HOUR,
        "now_ms": NOW,
    }
    args.update(kw)
    return issue(TREASURY, **args)


def _chain3() -> list[Envelope]:
    """treasury → alice (5 USD, python.*) → bob (2 USD, python.*) → carol (1 USD, python.run)."""
    root = _root()
    mid = delegate(root, ALICE, audience=BOB.did, amount=2_000_000, now_ms=NOW)
    leaf = delegate(
        mid, BOB, audience=CAROL.did, amount=1_000_000, scope="python.run", now_ms=NOW + 1
    )
    return [root, mid, leaf]


def _resign(signer: Identity, env: Envelope, **changes: Any) -> Envelope:
    """Re-sign ``env``'s body with some fields changed (bypassing delegate's checks)."""
    body = dict(env.body)
    body.update(changes)
    body["signer"] = signer.did
    return sign_envelope(signer, TOKEN_TYPE, {k: v for k, v in body.items() if v is not None})


def _invalid(chain: list[Any], match: str, **kw: Any) -> TokenInvalid:
    kw.setdefault("now_ms", NOW + 10)
    with pytest.raises(TokenInvalid, match=match) as info:
        verify_chain(chain, **kw)
    return info.value


# --------------------------------------------------------------------------- happy path


def test_issue_delegate_twice_and_verify() -> None:
    chain = _chain3()
    grant = verify_chain(
        chain,
        now_ms=NOW + 10,
        trusted_roots={TREASURY.did}.__contains__,
        capability="python.run",
        holder=CAROL.did,
    )
    assert grant == TokenGrant(
        root_cid=chain[0].cid,
        leaf_cid=chain[2].cid,
        issuer=TREASURY.did,
        holder=CAROL.did,
        scope="python.run",
        amount=1_000_000,
        currency="USD",
        nbf=NOW,
        exp=NOW + HOUR,
        chain_cids=tuple(e.cid for e in chain),
        link_amounts=(5_000_000, 2_000_000, 1_000_000),
    )
    assert grant.covers("python.run") and not grant.covers("python.other")
    with pytest.raises(AttributeError):
        grant.amount = 1  # type: ignore[misc]


def test_token_envelope_shape_and_cid() -> None:
    root = _root(nonce=b"\x07" * 16)
    assert root.type == "token"
    assert parse_cid(root.cid)[0] == 0x0201
    assert set(root.body) == {
        "signer",
        "ts",
        "aud",
        "scope",
        "amount",
        "currency",
        "nbf",
        "exp",
        "nonce",
    }
    env, tok = decode_token(root.raw)
    assert env.cid == root.cid
    assert tok == Token(
        signer=TREASURY.did,
        ts=NOW,
        aud=ALICE.did,
        scope="python.*",
        amount=5_000_000,
        currency="USD",
        nbf=NOW,
        exp=NOW + HOUR,
        nonce=b"\x07" * 16,
    )
    child = delegate(root, ALICE, audience=BOB.did, now_ms=NOW)
    assert decode_token(child)[1].parent == root.cid
    # Identical inputs give identical bytes (deterministic signatures, canonical bodies).
    assert _root(nonce=b"\x07" * 16).raw == root.raw


def test_verify_accepts_bytes_and_envelopes() -> None:
    chain = _chain3()
    a = verify_chain([e.raw for e in chain], now_ms=NOW + 10)
    b = verify_chain(chain, now_ms=NOW + 10)
    assert a == b


def test_single_root_chain_and_defaults_inherited() -> None:
    root = _root(exp=NOW + 5 * HOUR, ttl_ms=None, nbf=NOW - 1000)
    grant = verify_chain([root], now_ms=NOW, holder=ALICE.did)
    assert (grant.nbf, grant.exp, grant.root_cid, grant.leaf_cid) == (
        NOW - 1000,
        NOW + 5 * HOUR,
        root.cid,
        root.cid,
    )
    child = delegate(root, ALICE, audience=BOB.did, now_ms=NOW)
    _, tok = decode_token(child)
    assert (tok.amount, tok.scope, tok.currency, tok.nbf, tok.exp) == (
        5_000_000,
        "python.*",
        "USD",
        NOW - 1000,
        NOW + 5 * HOUR,
    )
    child = delegate(root, ALICE, audience=BOB.did, ttl_ms=60_000, now_ms=NOW)
    assert decode_token(child)[1].exp == NOW + 60_000


def test_validity_window_edges() -> None:
    root = _root()  # nbf = NOW, exp = NOW + HOUR
    verify_chain([root], now_ms=NOW + HOUR)  # exp itself is still valid
    verify_chain([root], now_ms=NOW - 5_000)  # within the default skew
    _invalid([root], r"expired 1 ms ago", now_ms=NOW + HOUR + 1)
    _invalid([root], r"not yet valid", now_ms=NOW - 5_001)
    _invalid([root], r"not yet valid", now_ms=NOW - 1, max_skew_ms=0)


# --------------------------------------------------------------------------- failures


def test_amount_increase_is_refused() -> None:
    root = _root(amount=1_000_000)
    with pytest.raises(TokenInvalid, match=r"^delegation: amount 5000000 exceeds parent's 1000000"):
        delegate(root, ALICE, audience=BOB.did, amount=5_000_000, now_ms=NOW)
    child = _resign(ALICE, delegate(root, ALICE, audience=BOB.did, now_ms=NOW), amount=5_000_000)
    _invalid([root, child], r"^link 2: amount 5000000 exceeds parent's 1000000\Z")


@pytest.mark.parametrize(
    ("parent", "child"),
    [("python.*", "*"), ("python.run", "python.*"), ("python.*", "gpu.*"), ("a.b", "a.b.c")],
)
def test_scope_widening_is_refused(parent: str, child: str) -> None:
    root = _root(scope=parent)
    msg = f"scope '{re.escape(child)}' is not within parent scope '{re.escape(parent)}'"
    with pytest.raises(TokenInvalid, match=f"^delegation: {msg}"):
        delegate(root, ALICE, audience=BOB.did, scope=child, now_ms=NOW)
    forged = _resign(ALICE, delegate(root, ALICE, audience=BOB.did, now_ms=NOW), scope=child)
    _invalid([root, forged], f"^link 2: {msg}")


def test_later_expiry_is_refused() -> None:
    root = _root()
    with pytest.raises(TokenInvalid, match=r"exp .* is later than parent's .* \(by 1 s\)"):
        delegate(root, ALICE, audience=BOB.did, exp=NOW + HOUR + 1000, now_ms=NOW)
    with pytest.raises(TokenInvalid, match=r"later than parent's"):
        delegate(root, ALICE, audience=BOB.did, ttl_ms=2 * HOUR, now_ms=NOW)
    forged = _resign(ALICE, delegate(root, ALICE, audience=BOB.did, now_ms=NOW), exp=NOW + 2 * HOUR)
    _invalid([root, forged], rf"^link 2: exp {NOW + 2 * HOUR} is later than parent's {NOW + HOUR}")


def test_earlier_nbf_is_refused() -> None:
    root = _root()
    with pytest.raises(TokenInvalid, match=r"nbf .* is earlier than parent's"):
        delegate(root, ALICE, audience=BOB.did, nbf=NOW - 1, now_ms=NOW)
    forged = _resign(ALICE, delegate(root, ALICE, audience=BOB.did, now_ms=NOW), nbf=NOW - 60_000)
    _invalid(
        [root, forged], rf"^link 2: nbf {NOW - 60_000} is earlier than parent's {NOW} \(by 60 s\)"
    )


def test_currency_change_is_refused() -> None:
    root = _root()
    forged = _resign(ALICE, delegate(root, ALICE, audience=BOB.did, now_ms=NOW), currency="EUR")
    _invalid([root, forged], r"^link 2: currency 'EUR' differs from parent's 'USD'")


def test_wrong_signer_is_refused() -> None:
    root = _root()  # issued to alice
    with pytest.raises(TokenInvalid, match="only the audience may"):
        delegate(root, MALLORY, audience=MALLORY.did, now_ms=NOW)
    forged = _resign(MALLORY, delegate(root, ALICE, audience=BOB.did, now_ms=NOW))
    e = _invalid([root, forged], r"^link 2 is signed by did:key:\w+, but link 1 was issued to")
    assert MALLORY.did in str(e) and ALICE.did in str(e)


def test_broken_parent_link_is_refused() -> None:
    root, mid, leaf = _chain3()
    other = _root()  # same terms, another nonce: another CID
    _invalid([other, mid, leaf], rf"^link 2: parent is {mid.body['parent']}, but link 1 has CID")
    _invalid([root, leaf], r"^link 2: parent is .*, but link 1 has CID")
    _invalid([mid, leaf], r"^link 1 has parent .*: the chain is incomplete")
    orphan = _resign(ALICE, mid, parent=None)
    _invalid([root, orphan], r"^link 2 has no parent")


def test_forged_signature_is_refused() -> None:
    chain = _chain3()
    leaf = chain[2]
    sig = bytearray(leaf.signature)
    sig[0] ^= 1
    raw = canonical_encode({"b": leaf.body_bytes, "s": bytes(sig), "t": "token", "v": 1})
    e = _invalid([chain[0], chain[1], raw], r"^signature of link 3 does not verify")
    assert isinstance(e.__cause__, SignatureInvalid)
    # A changed body byte (the amount) breaks the signature as well.
    body = dict(leaf.body)
    body["amount"] = 999_999
    raw = canonical_encode({"b": canonical_encode(body), "s": leaf.signature, "t": "token", "v": 1})
    _invalid([chain[0], chain[1], raw], r"^signature of link 3 does not verify")
    with pytest.raises(TokenInvalid, match="signature of the parent token does not verify"):
        delegate(raw, CAROL, audience=BOB.did, now_ms=NOW)


def test_expired_and_not_yet_valid() -> None:
    chain = _chain3()
    _invalid(chain, r"^link 1: expired 3 s ago", now_ms=NOW + HOUR + 3000)
    _invalid(chain, r"^link 1: not yet valid, valid from nbf .* \(in 60 s\)", now_ms=NOW - 60_000)
    root = _root()
    late = delegate(root, ALICE, audience=BOB.did, nbf=NOW + 10 * 60_000, now_ms=NOW)
    _invalid([root, late], r"^link 2: not yet valid, .*\(in 10 min\)", now_ms=NOW)
    short = delegate(root, ALICE, audience=BOB.did, ttl_ms=1500, now_ms=NOW)
    _invalid([root, short], r"^link 2: expired 2.5 s ago", now_ms=NOW + 4000)


def test_holder_capability_and_trust() -> None:
    chain = _chain3()
    e = _invalid(chain, r"^the token is issued to did:key:\w+, not to the holder", holder=BOB.did)
    assert CAROL.did in str(e)
    _invalid(
        chain,
        r"^capability 'gpu.run' is outside the token's scope 'python.run'",
        capability="gpu.run",
    )
    _invalid(chain, r"outside the token's scope", capability="python.run.fast")
    _invalid(chain, rf"^root issuer {TREASURY.did} is not trusted", trusted_roots=lambda d: False)
    verify_chain(chain, now_ms=NOW, trusted_roots=lambda d: d == TREASURY.did)


def test_chain_length_limits() -> None:
    chain = [_root(audience=ALICE.did, scope="*")]
    for _ in range(MAX_CHAIN_LINKS - 1):
        chain.append(delegate(chain[-1], ALICE, audience=ALICE.did, now_ms=NOW))
    assert len(verify_chain(chain, now_ms=NOW).chain_cids) == MAX_CHAIN_LINKS
    chain.append(delegate(chain[-1], ALICE, audience=ALICE.did, now_ms=NOW))
    _invalid(chain, rf"^chain of {MAX_CHAIN_LINKS + 1} links exceeds the limit of 8")
    _invalid([], "^empty token chain")
    with pytest.raises(ValueError):
        encode_chain(chain)
    with pytest.raises(DecodeError, match="1 to 8 links, got 9"):
        decode_chain(canonical_encode([e.raw for e in chain]))


def test_not_a_token_is_refused() -> None:
    bid_like = sign_envelope(ALICE, "bid", {"ts": NOW, "amount": 1})
    e = _invalid([bid_like.raw], r"^link 1: not a valid token")
    assert isinstance(e.__cause__, WrongMessageType)
    _invalid([b"\xc0"], r"^link 1: not a valid token")
    unknown_field = _resign(TREASURY, _root(), extra=1)
    _invalid([unknown_field], r"^link 1: not a valid token: invalid token body: extra")
    empty_window = _resign(TREASURY, _root(), nbf=NOW + 2 * HOUR)
    _invalid([empty_window], r"never valid")
    big = sign_envelope(TREASURY, "token", {"ts": NOW, "pad": b"x" * MAX_TOKEN_BYTES})
    _invalid([big], r"exceeds the limit of 1024")
    _invalid([big.raw], r"exceeds the limit of 1024")


def test_issue_and_delegate_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scope"):
        _root(scope="Python.*")
    with pytest.raises(ValueError, match="exactly one of ttl_ms or exp"):
        _root(exp=NOW + 1)
    with pytest.raises(ValueError, match="amount"):
        _root(amount=-1)
    with pytest.raises(ValueError, match="currency"):
        _root(currency="usd")
    with pytest.raises(ValueError, match="aud"):
        _root(audience="did:key:nope")
    with pytest.raises(ValueError, match="never valid"):
        _root(nbf=NOW + 2 * HOUR)
    with pytest.raises(ValueError, match="positive"):
        _root(ttl_ms=0)
    with pytest.raises(ValueError, match="at most one"):
        delegate(_root(), ALICE, audience=BOB.did, ttl_ms=1, exp=NOW + 1, now_ms=NOW)
    with pytest.raises(TokenInvalid, match="malformed"):
        delegate(b"junk", ALICE, audience=BOB.did, now_ms=NOW)


# --------------------------------------------------------------------------- transport


def test_encode_decode_chain_round_trip() -> None:
    chain = _chain3()
    data = encode_chain(chain)
    assert canonical_decode(data) == [e.raw for e in chain]
    back = decode_chain(data)
    assert [e.raw for e in back] == [e.raw for e in chain]
    assert verify_chain(back, now_ms=NOW) == verify_chain(chain, now_ms=NOW)
    assert encode_chain([e.raw for e in chain]) == data


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (canonical_encode({"a": 1}), DecodeError, "array"),
        (canonical_encode([]), DecodeError, "1 to 8 links, got 0"),
        (canonical_encode(["x"]), DecodeError, "not bin"),
        (canonical_encode([b"x" * 1025]), DecodeError, "exceeds the token limit"),
        (b"\x91", DecodeError, "malformed"),
        (b"\x00" * (9 * 1024 + 1), DecodeError, "exceeds the limit"),
        (canonical_encode([b"\xc0"]), ProtocolError, "."),
    ],
)
def test_decode_chain_refuses(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_chain(data)


def test_decode_chain_refuses_other_message_types() -> None:
    bid_like = sign_envelope(ALICE, "bid", {"ts": NOW})
    with pytest.raises(WrongMessageType):
        decode_chain(canonical_encode([bid_like.raw]))


# --------------------------------------------------------------------------- scopes

_CAPS = ["a", "a.b", "a.b.c", "a.c", "ab", "ab.c", "b", "b.a"]
_PATTERNS = ["*", *_CAPS, *(c + ".*" for c in _CAPS)]


@pytest.mark.parametrize(
    ("pattern", "capability", "covered"),
    [
        ("*", "anything.at.all", True),
        ("python.*", "python", True),
        ("python.*", "python.run", True),
        ("python.*", "python.run.fast", True),
        ("python.*", "pythonx", False),
        ("python.*", "pythonx.run", False),
        ("python.run", "python.run", True),
        ("python.run", "python.run.fast", False),
        ("python.run", "python", False),
    ],
)
def test_scope_covers(pattern: str, capability: str, covered: bool) -> None:
    assert scope_covers(pattern, capability) is covered


def test_scope_grammar() -> None:
    for ok in ["*", "a", "a.*", "python.run", "a.b.c.d.e.f.g.*", "a.b.c.d.e.f.g.h"]:
        assert SCOPE_RE.match(ok), ok
    for bad in ["", "*.*", "a.*.b", "A", "a.", ".a", "a*", "a.b.c.d.e.f.g.h.*", "a.*\n", "**"]:
        assert not SCOPE_RE.match(bad), bad


def test_scope_within_is_set_inclusion() -> None:
    """Over a small universe (plus a witness below each prefix), ``scope_within(c, p)`` holds
    exactly when every capability ``c`` covers is covered by ``p``."""
    universe = set(_CAPS) | {c + ".zz" for c in _CAPS} | {"zz"}
    for child in _PATTERNS:
        for parent in _PATTERNS:
            inclusion = all(
                scope_covers(parent, cap) for cap in universe if scope_covers(child, cap)
            )
            assert scope_within(child, parent) is inclusion, (child, parent)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "ab", "c_d"]), min_size=1, max_size=4).map(".".join),
    st.lists(st.sampled_from(["a", "b", "ab", "c_d"]), min_size=1, max_size=4).map(".".join),
    st.booleans(),
    st.booleans(),
)
def test_scope_within_is_transitive_and_sound(
    c: str, p: str, c_prefix: bool, p_prefix: bool
) -> None:
    child = c + ".*" if c_prefix else c
    parent = p + ".*" if p_prefix else p
    assert CAPABILITY_RE.match(c) and SCOPE_RE.match(child) and SCOPE_RE.match(parent)
    if scope_within(child, parent):
        for cap in (c, c + ".x", c + ".x.y"):
            if scope_covers(child, cap):
                assert scope_covers(parent, cap)
        assert scope_within(child, "*")
    assert scope_within(child, child)


# --------------------------------------------------------------------------- RFC example

RFC = (Path(__file__).parents[3] / "rfcs" / "0001-crankmesh-wire-protocol.md").read_text(
    encoding="utf-8"
)


def test_rfc_example_is_reproduced_byte_for_byte() -> None:
    """RFC 0001 §8.12 quotes this example; the reference must produce exactly those bytes."""
    section = RFC[RFC.index("### 8.12 Budget tokens") : RFC.index("## 9. Subjects")]
    treasury = Identity.from_seed(bytes([0x42]) * 32)
    originator = Identity.from_seed(bytes(range(32)))
    executor = Identity.from_seed(bytes(32))
    root = issue(
        treasury,
        audience=originator.did,
        scope="python.*",
        amount=5_000_000,
        currency="USD",
        now_ms=1_700_000_000_000,
        ttl_ms=3_600_000,
        nonce=bytes(range(0x30, 0x40)),
    )
    child = delegate(
        root,
        originator,
        audience=executor.did,
        amount=250_000,
        scope="python.run",
        exp=1_700_000_600_000,
        now_ms=1_700_000_000_100,
        nonce=bytes(range(0x40, 0x50)),
    )
    assert treasury.did in section
    for env in (root, child):
        hex_text = env.raw.hex()
        lines = [hex_text[i : i + 64] for i in range(0, len(hex_text), 64)]
        assert "\n".join(lines) in section
        assert f"({len(env.raw)} bytes), CID `{env.cid}`" in section
    assert f"The encoded chain is {len(encode_chain([root, child]))} bytes" in section
    grant = verify_chain(
        [root, child], now_ms=1_700_000_300_000, capability="python.run", holder=executor.did
    )
    assert (grant.amount, grant.exp, grant.holder) == (250_000, 1_700_000_600_000, executor.did)
    for now, kw in [
        (1_700_000_300_000, {"capability": "gpu.run"}),
        (1_700_000_700_000, {}),
        (1_699_999_990_000, {}),
    ]:
        with pytest.raises(TokenInvalid) as info:
            verify_chain([root, child], now_ms=now, **kw)
        assert f"`{info.value}`" in section
    assert '`t = "token"`' in section
