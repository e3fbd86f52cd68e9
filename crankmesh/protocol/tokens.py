"""Budget tokens: signed, delegable, attenuating spending capabilities (RFC 0001 §8.12).

A budget token is a signed message of type ``"token"``: its ``signer`` (the issuer) grants its
``aud`` (the audience, a DID) the right to spend up to ``amount`` micro-units of ``currency`` on
capabilities matching ``scope``, between ``nbf`` and ``exp``.  A *root* token is issued by a
human or treasury key; its audience may **delegate** a child token (``parent`` = the root's
envelope CID) to someone else, only ever narrowing it (*attenuation*)::

    root  = issue(treasury, audience=alice.did, scope="python.*", amount=5_000_000,
                  currency="USD", ttl_ms=3_600_000, now_ms=now)
    child = delegate(root, alice, audience=bob.did, amount=1_000_000, scope="python.run",
                     now_ms=now)
    grant = verify_chain([root, child], now_ms=now, capability="python.run", holder=bob.did)

A *chain* is ``[root, ..., leaf]``, at most :data:`MAX_CHAIN_LINKS` links.  Links are numbered
from 1 (the root) in every error message.

Scope patterns (:data:`SCOPE_RE`):

* ``*`` — every capability;
* ``a.b`` — exactly the capability ``a.b``;
* ``a.*`` — ``a`` itself and every capability below it (``a.b``, ``a.b.c``); the prefix has
  1 to 7 tokens, so that every prefix pattern matches at least one capability besides itself.

A pattern ``c`` is *within* ``p`` (:func:`scope_within`) when every capability ``c`` matches is
matched by ``p``; with the grammar above this is exactly: ``p`` is ``*``; or ``c == p``; or ``p``
is ``q.*`` and ``c`` (without a trailing ``.*``) is ``q`` or starts with ``q.``.

A token is an upper bound on spending *authority*, not a coin: two children of one token may
together name more than the parent's amount.  What has been spent is tracked by a ledger
(:class:`crankmesh.market.BudgetLedger`) and, for audit, by the ``budget`` CID that every
receipt carries.

Pure: no I/O, no clocks (``now_ms`` is a parameter).  Error handling: chain defects raise
:class:`~crankmesh.protocol.errors.TokenInvalid` with a message naming the link and the rule;
malformed caller arguments (a bad scope pattern, both ``ttl_ms`` and ``exp``) raise
:class:`ValueError`; :func:`decode_chain` raises
:class:`~crankmesh.protocol.errors.ProtocolError` subclasses (``DecodeError`` for the limits).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Self

import pydantic
from pydantic import AfterValidator, model_validator

from .encoding import canonical_decode, canonical_encode
from .envelope import Envelope, open_envelope
from .errors import DecodeError, ProtocolError, SignatureInvalid, TokenInvalid
from .identity import Identity
from .messages import DID, Currency, DocCID, Nonce, SignedMessage, UInt, decode_message

__all__ = [
    "MAX_CHAIN_BYTES",
    "MAX_CHAIN_LINKS",
    "MAX_TOKEN_BYTES",
    "SCOPE_RE",
    "TOKEN_TYPE",
    "Token",
    "TokenGrant",
    "decode_chain",
    "decode_token",
    "delegate",
    "encode_chain",
    "issue",
    "scope_covers",
    "scope_within",
    "verify_chain",
]

TOKEN_TYPE: Final = "token"
#: Longest chain accepted: a root and up to 7 delegations.
MAX_CHAIN_LINKS: Final = 8
#: Largest token envelope accepted (a real one is about 300–650 bytes).
MAX_TOKEN_BYTES: Final = 1024
#: Largest encoded chain accepted (8 links of 1024 bytes plus array and bin headers).
MAX_CHAIN_BYTES: Final = 9 * 1024

_TOKEN_PART: Final = r"[a-z0-9][a-z0-9_-]{0,31}"
#: ``*``, a capability (1–8 tokens), or a capability prefix of 1–7 tokens followed by ``.*``.
SCOPE_RE: Final = re.compile(
    rf"\*\Z|{_TOKEN_PART}(\.{_TOKEN_PART}){{0,7}}\Z|{_TOKEN_PART}(\.{_TOKEN_PART}){{0,6}}\.\*\Z"
)


def _check_scope(value: str) -> str:
    if not SCOPE_RE.match(value):
        raise ValueError(
            f"scope {value!r} must be '*', a capability such as 'python.run', or a prefix "
            "pattern such as 'python.*'"
        )
    return value


Scope = Annotated[str, AfterValidator(_check_scope)]


def scope_covers(pattern: str, capability: str) -> bool:
    """Whether the scope ``pattern`` allows spending on ``capability``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-2]
        return capability == prefix or capability.startswith(prefix + ".")
    return capability == pattern


def scope_within(child: str, parent: str) -> bool:
    """Whether every capability ``child`` covers is covered by ``parent`` (attenuation)."""
    if parent == "*":
        return True
    if child == "*":
        return False
    if not parent.endswith(".*"):
        return child == parent
    prefix = parent[:-2]
    base = child[:-2] if child.endswith(".*") else child
    return base == prefix or base.startswith(prefix + ".")


class Token(SignedMessage):
    """Body of a ``"token"`` envelope; ``signer`` is the issuer (RFC 0001 §8.12)."""

    TYPE: ClassVar[str] = TOKEN_TYPE
    aud: DID
    scope: Scope
    amount: UInt
    currency: Currency
    nbf: UInt
    exp: UInt
    nonce: Nonce
    parent: DocCID | None = None

    @model_validator(mode="after")
    def _window_not_empty(self) -> Self:
        if self.nbf > self.exp:
            raise ValueError(f"nbf {self.nbf} is after exp {self.exp}: the token is never valid")
        return self


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a verified chain entitles its holder to (the leaf's terms).

    ``chain_cids`` and ``link_amounts`` list every link from the root to the leaf, so that a
    ledger can bound spending at every level of the delegation tree.
    """

    root_cid: str
    leaf_cid: str
    issuer: str
    holder: str
    scope: str
    amount: int
    currency: str
    nbf: int
    exp: int
    chain_cids: tuple[str, ...]
    link_amounts: tuple[int, ...]

    def covers(self, capability: str) -> bool:
        """Whether the grant's scope allows ``capability``."""
        return scope_covers(self.scope, capability)


def _fmt_ms(ms: int) -> str:
    """A human duration: ``250 ms``, ``3 s``, ``3.5 s``, ``12 min``, ``5 h``, ``3 d``."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 120_000:
        return f"{ms // 1000} s" if ms % 1000 == 0 else f"{ms / 1000:.1f} s"
    if ms < 7_200_000:
        return f"{ms // 60_000} min"
    if ms < 172_800_000:
        return f"{ms // 3_600_000} h"
    return f"{ms // 86_400_000} d"


def _validated(body: dict[str, Any]) -> Token:
    try:
        return Token.model_validate(body)
    except pydantic.ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'token'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ValueError(f"invalid token: {errors}") from None


def issue(
    issuer: Identity,
    *,
    audience: str,
    scope: str,
    amount: int,
    currency: str = "USD",
    now_ms: int,
    ttl_ms: int | None = None,
    exp: int | None = None,
    nbf: int | None = None,
    nonce: bytes | None = None,
) -> Envelope:
    """Sign a root token (no ``parent``) granting ``audience`` ``amount`` µ``currency``.

    Give exactly one of ``ttl_ms`` (``exp = now_ms + ttl_ms``) or ``exp``; ``nbf`` defaults to
    ``now_ms`` and ``nonce`` to 16 random bytes.  Raises :class:`ValueError` for any invalid
    field.
    """
    if (ttl_ms is None) == (exp is None):
        raise ValueError("give exactly one of ttl_ms or exp")
    if ttl_ms is not None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        exp = now_ms + ttl_ms
    body: dict[str, Any] = {
        "signer": issuer.did,
        "ts": now_ms,
        "aud": audience,
        "scope": scope,
        "amount": amount,
        "currency": currency,
        "nbf": now_ms if nbf is None else nbf,
        "exp": exp,
        "nonce": secrets.token_bytes(16) if nonce is None else nonce,
    }
    return _validated(body).sign(issuer)


def decode_token(env_or_bytes: Envelope | bytes) -> tuple[Envelope, Token]:
    """Parse (not verify) one token envelope; :class:`ProtocolError` subclasses on defects."""
    if isinstance(env_or_bytes, Envelope):
        if len(env_or_bytes.raw) > MAX_TOKEN_BYTES:
            raise DecodeError(
                f"token of {len(env_or_bytes.raw)} bytes exceeds the limit of {MAX_TOKEN_BYTES}"
            )
        return decode_message(env_or_bytes, Token)
    return decode_message(env_or_bytes, Token, max_len=MAX_TOKEN_BYTES)


def _check_attenuation(parent: Token, child: Token, where: str) -> None:
    """Raise TokenInvalid unless ``child`` narrows ``parent``; ``where`` names the child."""
    if child.currency != parent.currency:
        raise TokenInvalid(
            f"{where}: currency {child.currency!r} differs from parent's {parent.currency!r}"
        )
    if child.amount > parent.amount:
        raise TokenInvalid(f"{where}: amount {child.amount} exceeds parent's {parent.amount}")
    if not scope_within(child.scope, parent.scope):
        raise TokenInvalid(
            f"{where}: scope {child.scope!r} is not within parent scope {parent.scope!r}"
        )
    if child.exp > parent.exp:
        raise TokenInvalid(
            f"{where}: exp {child.exp} is later than parent's {parent.exp} "
            f"(by {_fmt_ms(child.exp - parent.exp)})"
        )
    if child.nbf < parent.nbf:
        raise TokenInvalid(
            f"{where}: nbf {child.nbf} is earlier than parent's {parent.nbf} "
            f"(by {_fmt_ms(parent.nbf - child.nbf)})"
        )


def delegate(
    parent_env: Envelope | bytes,
    holder: Identity,
    *,
    audience: str,
    amount: int | None = None,
    scope: str | None = None,
    exp: int | None = None,
    ttl_ms: int | None = None,
    nbf: int | None = None,
    now_ms: int,
    nonce: bytes | None = None,
) -> Envelope:
    """Sign a child of ``parent_env`` for ``audience``, narrowing what the parent grants.

    ``holder`` must be the parent's ``aud``.  Omitted terms are inherited from the parent
    (``amount``, ``scope``, ``exp``, ``nbf``, and always ``currency``); ``ttl_ms`` sets
    ``exp = now_ms + ttl_ms`` instead of ``exp``.

    Error handling: raises :class:`TokenInvalid` when the parent does not parse or verify, when
    ``holder`` is not its audience, or when a term would widen the parent (the same messages
    :func:`verify_chain` gives); :class:`ValueError` for a malformed argument.
    """
    try:
        penv, ptok = decode_token(parent_env)
        penv.verify()
    except SignatureInvalid as exc:
        raise TokenInvalid(f"signature of the parent token does not verify: {exc}") from exc
    except ProtocolError as exc:
        raise TokenInvalid(f"the parent token is malformed: {exc}") from exc
    if ptok.aud != holder.did:
        raise TokenInvalid(
            f"{holder.did} cannot delegate a token issued to {ptok.aud} (only the audience may)"
        )
    if ttl_ms is not None and exp is not None:
        raise ValueError("give at most one of ttl_ms or exp")
    if ttl_ms is not None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        exp = now_ms + ttl_ms
    body: dict[str, Any] = {
        "signer": holder.did,
        "ts": now_ms,
        "aud": audience,
        "scope": ptok.scope if scope is None else scope,
        "amount": ptok.amount if amount is None else amount,
        "currency": ptok.currency,
        "nbf": ptok.nbf if nbf is None else nbf,
        "exp": ptok.exp if exp is None else exp,
        "nonce": secrets.token_bytes(16) if nonce is None else nonce,
        "parent": penv.cid,
    }
    child = _validated(body)
    _check_attenuation(ptok, child, "delegation")
    return child.sign(holder)


def verify_chain(
    chain: Sequence[bytes | Envelope],
    *,
    now_ms: int,
    trusted_roots: Callable[[str], bool] | None = None,
    capability: str | None = None,
    holder: str | None = None,
    max_skew_ms: int = 5_000,
) -> TokenGrant:
    """Verify a chain ``[root, ..., leaf]`` and return what it grants its leaf's audience.

    Checks, link by link from the root: the envelope parses as a token; its signature
    verifies; the root has no ``parent`` and the root issuer satisfies ``trusted_roots`` (when
    given); every other link names the previous link's CID as ``parent``, is signed by the
    previous link's ``aud`` and narrows it (currency, amount, scope, exp, nbf); and every link
    is valid at ``now_ms`` (``nbf - max_skew_ms <= now_ms <= exp``).  Then the leaf's scope
    must cover ``capability`` and its ``aud`` must be ``holder`` (when given).

    Error handling: every defect raises :class:`TokenInvalid` naming the link (numbered from 1,
    the root) and the rule; nothing else escapes.
    """
    if not chain:
        raise TokenInvalid("empty token chain")
    if len(chain) > MAX_CHAIN_LINKS:
        raise TokenInvalid(
            f"chain of {len(chain)} links exceeds the limit of {MAX_CHAIN_LINKS} links"
        )
    envs: list[Envelope] = []
    toks: list[Token] = []
    for i, item in enumerate(chain, start=1):
        try:
            env, tok = decode_token(item)
        except ProtocolError as exc:
            raise TokenInvalid(f"link {i}: not a valid token: {exc}") from exc
        try:
            env.verify()
        except SignatureInvalid as exc:
            raise TokenInvalid(f"signature of link {i} does not verify ({env.signer})") from exc
        if i == 1:
            if tok.parent is not None:
                raise TokenInvalid(
                    f"link 1 has parent {tok.parent}, so it is not a root token: "
                    "the chain is incomplete"
                )
            if trusted_roots is not None and not trusted_roots(tok.signer):
                raise TokenInvalid(f"root issuer {tok.signer} is not trusted")
        else:
            prev_env, prev = envs[-1], toks[-1]
            if tok.parent is None:
                raise TokenInvalid(f"link {i} has no parent, but link {i - 1} precedes it")
            if tok.parent != prev_env.cid:
                raise TokenInvalid(
                    f"link {i}: parent is {tok.parent}, but link {i - 1} has CID {prev_env.cid}"
                )
            if tok.signer != prev.aud:
                raise TokenInvalid(
                    f"link {i} is signed by {tok.signer}, but link {i - 1} was issued to "
                    f"{prev.aud} (only the audience may delegate)"
                )
            _check_attenuation(prev, tok, f"link {i}")
        if now_ms > tok.exp:
            raise TokenInvalid(f"link {i}: expired {_fmt_ms(now_ms - tok.exp)} ago (exp {tok.exp})")
        if now_ms + max_skew_ms < tok.nbf:
            raise TokenInvalid(
                f"link {i}: not yet valid, valid from nbf {tok.nbf} "
                f"(in {_fmt_ms(tok.nbf - now_ms)})"
            )
        envs.append(env)
        toks.append(tok)
    leaf = toks[-1]
    if capability is not None and not scope_covers(leaf.scope, capability):
        raise TokenInvalid(f"capability {capability!r} is outside the token's scope {leaf.scope!r}")
    if holder is not None and leaf.aud != holder:
        raise TokenInvalid(f"the token is issued to {leaf.aud}, not to the holder {holder}")
    return TokenGrant(
        root_cid=envs[0].cid,
        leaf_cid=envs[-1].cid,
        issuer=toks[0].signer,
        holder=leaf.aud,
        scope=leaf.scope,
        amount=leaf.amount,
        currency=leaf.currency,
        nbf=leaf.nbf,
        exp=leaf.exp,
        chain_cids=tuple(e.cid for e in envs),
        link_amounts=tuple(t.amount for t in toks),
    )


def encode_chain(chain: Sequence[Envelope | bytes]) -> bytes:
    """The transport form of a chain: canonical msgpack array of envelope bytes, root first."""
    if not 1 <= len(chain) <= MAX_CHAIN_LINKS:
        raise ValueError(f"a chain has 1 to {MAX_CHAIN_LINKS} links, got {len(chain)}")
    return canonical_encode([e.raw if isinstance(e, Envelope) else bytes(e) for e in chain])


def decode_chain(data: bytes, *, max_links: int = MAX_CHAIN_LINKS) -> list[Envelope]:
    """Parse (not verify) the transport form of a chain.

    Error handling: more than :data:`MAX_CHAIN_BYTES` bytes, not a canonical array of 1 to
    ``max_links`` bin elements, or an element larger than :data:`MAX_TOKEN_BYTES` raises
    :class:`DecodeError`; an element that is not a ``"token"`` envelope raises the
    :class:`ProtocolError` subclass :func:`open_envelope` gives.  Call :func:`verify_chain`
    on the result.
    """
    value = canonical_decode(data, max_len=MAX_CHAIN_BYTES)
    if not isinstance(value, list):
        raise DecodeError("a token chain is an array of token envelopes")
    if not 1 <= len(value) <= max_links:
        raise DecodeError(f"a token chain has 1 to {max_links} links, got {len(value)}")
    envs: list[Envelope] = []
    for i, item in enumerate(value, start=1):
        if not isinstance(item, bytes):
            raise DecodeError(f"link {i} of the token chain is not bin")
        if len(item) > MAX_TOKEN_BYTES:
            raise DecodeError(
                f"link {i} of {len(item)} bytes exceeds the token limit of {MAX_TOKEN_BYTES}"
            )
        envs.append(open_envelope(item, expected_type=TOKEN_TYPE, max_len=MAX_TOKEN_BYTES))
    return envs
