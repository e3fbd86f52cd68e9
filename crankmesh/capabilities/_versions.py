"""Versions and version constraints: the part of PEP 440 that capability matching needs.

No dependency on ``packaging``.  Versions are parsed and ordered as PEP 440 says
(``1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1``; trailing zeros do not matter; a local label
``+cpu`` sorts after the same public version).  Constraints are comma-joined specifiers with
the operators ``>= > <= < == != ~=`` and ``==X.*`` / ``!=X.*`` wildcards.

One deliberate difference from installers: a specifier set does *not* exclude pre-releases by
default.  Matching checks a version an executor already has installed, not one to choose, so
``2.2.0rc1`` satisfies ``>=2.1``.  PEP 440's exclusive-ordering rules are kept, so ``<3`` is not
satisfied by ``3.0.0rc1`` and ``>2`` is not satisfied by ``2.0.post1``; a candidate's local
label is ignored unless the specifier has one.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Final

from ._errors import CapabilitySpecError

_VERSION_RE: Final = re.compile(
    r"""
    ^\s*v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?P<post>-(?P<post_n1>[0-9]+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
    (?P<dev>[-_.]?dev[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    \s*$
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PRE_NAMES: Final = {
    "a": "a",
    "alpha": "a",
    "b": "b",
    "beta": "b",
    "c": "rc",
    "rc": "rc",
    "pre": "rc",
    "preview": "rc",
}
_PRE_ORDER: Final = {"a": 0, "b": 1, "rc": 2}
_SPEC_RE: Final = re.compile(r"^\s*(~=|==|!=|<=|>=|<|>)\s*(\S.*?)\s*$")

_Key = tuple[
    int,
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[tuple[int, int, str], ...],
]


@dataclass(frozen=True, slots=True, eq=False)
class Version:
    """A PEP 440 version.  Compare with ``<``/``==``; ``str()`` gives the normalised form."""

    release: tuple[int, ...]
    epoch: int = 0
    pre: tuple[str, int] | None = None
    post: int | None = None
    dev: int | None = None
    local: str | None = None
    _key: _Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.release or any(n < 0 for n in self.release):
            raise CapabilitySpecError("", f"invalid release segment {self.release!r}")
        if self.pre is not None and self.pre[0] not in _PRE_ORDER:
            raise CapabilitySpecError("", f"invalid pre-release {self.pre!r}")
        release = list(self.release)
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        if self.pre is None and self.post is None and self.dev is not None:
            pre_key: tuple[int, ...] = (0,)  # 1.0.dev1 sorts before 1.0a1
        elif self.pre is None:
            pre_key = (3,)
        else:
            pre_key = (1, _PRE_ORDER[self.pre[0]], self.pre[1])
        post_key = (0,) if self.post is None else (1, self.post)
        dev_key = (1,) if self.dev is None else (0, self.dev)
        local_key: tuple[tuple[int, int, str], ...] = ()
        if self.local is not None:
            local_key = tuple(
                (1, int(part), "") if part.isdigit() else (0, 0, part)
                for part in re.split(r"[-_.]", self.local.lower())
            )
        key: _Key = (self.epoch, tuple(release), pre_key, post_key, dev_key, local_key)
        object.__setattr__(self, "_key", key)

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``"2.13.0"``, ``"2.13.0+cpu"``, ``"2.0.0rc1"``, ``"v1.26"`` …"""
        return _parse_version(text)

    # ------------------------------------------------------------------ ordering

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __le__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key <= other._key

    def __gt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key > other._key

    def __ge__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key >= other._key

    # ------------------------------------------------------------------ parts

    @property
    def public(self) -> Version:
        """The version without its local label."""
        if self.local is None:
            return self
        return Version(self.release, self.epoch, self.pre, self.post, self.dev)

    @property
    def base(self) -> Version:
        """Epoch and release only: ``2.1.0rc1.post2+cpu`` → ``2.1.0``."""
        return Version(self.release, self.epoch)

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None or self.dev is not None

    @property
    def is_postrelease(self) -> bool:
        return self.post is not None

    def __str__(self) -> str:
        text = f"{self.epoch}!" if self.epoch else ""
        text += ".".join(str(n) for n in self.release)
        if self.pre is not None:
            text += f"{self.pre[0]}{self.pre[1]}"
        if self.post is not None:
            text += f".post{self.post}"
        if self.dev is not None:
            text += f".dev{self.dev}"
        if self.local is not None:
            text += f"+{self.local}"
        return text


def _parse_version(text: object) -> Version:
    if not isinstance(text, str):
        raise CapabilitySpecError("", f"a version must be a string, got {text!r}")
    return _parse_version_text(text)


@functools.lru_cache(maxsize=1024)
def _parse_version_text(text: str) -> Version:
    m = _VERSION_RE.match(text)
    if m is None:
        raise CapabilitySpecError(
            "", f"{text!r} is not a version (expected something like '2.1', '2.13.0+cpu', '2.0rc1')"
        )
    pre = None
    if m["pre"]:
        pre = (_PRE_NAMES[m["pre_l"].lower()], int(m["pre_n"] or 0))
    post = None
    if m["post"]:
        post = int(m["post_n1"] or m["post_n2"] or 0)
    local = m["local"]
    return Version(
        release=tuple(int(n) for n in m["release"].split(".")),
        epoch=int(m["epoch"] or 0),
        pre=pre,
        post=post,
        dev=int(m["dev_n"] or 0) if m["dev"] else None,
        local=re.sub(r"[-_]", ".", local.lower()) if local else None,
    )


@dataclass(frozen=True, slots=True)
class Specifier:
    """One clause such as ``>=2.1``, ``~=1.26``, ``==2.*`` or ``!=2.0.1``."""

    operator: str
    version: Version
    wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> Specifier:
        if not isinstance(text, str):
            raise CapabilitySpecError("", f"a version specifier must be a string, got {text!r}")
        m = _SPEC_RE.match(text)
        if m is None:
            raise CapabilitySpecError(
                "",
                f"{text.strip()!r} is not a version specifier: start it with one of "
                "'>=', '>', '<=', '<', '==', '!=', '~=' (e.g. '>=2.1' or '==2.1.*')",
            )
        op, rest = m[1], m[2]
        wildcard = rest.endswith(".*")
        if wildcard:
            if op not in ("==", "!="):
                raise CapabilitySpecError("", f"{text.strip()!r}: '.*' only works with == and !=")
            rest = rest[:-2]
        version = _parse_version(rest)
        if wildcard and (version.is_prerelease or version.post is not None or version.local):
            raise CapabilitySpecError("", f"{text.strip()!r}: put '.*' after a plain release")
        if version.local is not None and op not in ("==", "!="):
            raise CapabilitySpecError(
                "", f"{text.strip()!r}: a local label (+...) only works with == and !="
            )
        if op == "~=" and len(version.release) < 2:
            raise CapabilitySpecError(
                "", f"{text.strip()!r}: ~= needs at least two release segments (e.g. '~=2.1')"
            )
        return cls(op, version, wildcard)

    def contains(self, candidate: Version) -> bool:
        op, spec = self.operator, self.version
        if op == "==":
            return self._equal(candidate)
        if op == "!=":
            return not self._equal(candidate)
        public = candidate.public
        if op == "~=":
            prefix = spec.release[:-1]
            return public >= spec and _release_startswith(public, spec.epoch, prefix)
        if op == "<=":
            return public <= spec
        if op == ">=":
            return public >= spec
        if op == "<":
            # "<3" must not admit a pre-release of 3 (3.0rc1), although it sorts below 3.
            if public >= spec:
                return False
            # 1a1.post1 is a pre-release of 1; 1.post1.dev0 is one of 1.post1.
            post = None if public.pre is not None else public.post
            family = Version(public.release, public.epoch, post=post)
            return spec.is_prerelease or not (public.is_prerelease and family == spec)
        # op == ">": ">2" must not admit a post-release of 2 (2.post1).
        if public <= spec:
            return False
        family = Version(public.release, public.epoch, pre=public.pre)
        return spec.is_postrelease or not (public.is_postrelease and family == spec)

    def _equal(self, candidate: Version) -> bool:
        spec = self.version
        if self.wildcard:
            return _release_startswith(candidate, spec.epoch, spec.release)
        if spec.local is None:
            return candidate.public == spec
        return candidate == spec

    def __str__(self) -> str:
        return f"{self.operator}{self.version}{'.*' if self.wildcard else ''}"


def _release_startswith(version: Version, epoch: int, prefix: tuple[int, ...]) -> bool:
    release = version.release + (0,) * max(0, len(prefix) - len(version.release))
    return version.epoch == epoch and release[: len(prefix)] == prefix


@dataclass(frozen=True, slots=True)
class SpecifierSet:
    """Comma-joined specifiers, all of which must hold; empty means "any version"."""

    specifiers: tuple[Specifier, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SpecifierSet:
        """``">=2.1,<3"``; ``""`` and ``"*"`` mean any version.  A bare ``"2.1"`` is refused:
        write ``"==2.1"``, ``">=2.1"`` or ``"==2.1.*"``, whichever you mean."""
        return _parse_specifier_set(text)

    def contains(self, version: Version | str) -> bool:
        if isinstance(version, str):
            version = _parse_version(version)
        return all(s.contains(version) for s in self.specifiers)

    def __contains__(self, version: Version | str) -> bool:
        return self.contains(version)

    def __bool__(self) -> bool:
        return bool(self.specifiers)

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.specifiers)


def _parse_specifier_set(text: object) -> SpecifierSet:
    if not isinstance(text, str):
        raise CapabilitySpecError("", f"a version constraint must be a string, got {text!r}")
    return _parse_specifier_text(text)


@functools.lru_cache(maxsize=1024)
def _parse_specifier_text(text: str) -> SpecifierSet:
    if text.strip() in ("", "*"):
        return SpecifierSet()
    specs: list[Specifier] = []
    for part in text.split(","):
        if not part.strip():
            raise CapabilitySpecError("", f"{text!r} has an empty clause between commas")
        if _VERSION_RE.match(part):
            raise CapabilitySpecError(
                "",
                f"{part.strip()!r} has no operator; write '=={part.strip()}', "
                f"'>={part.strip()}' or '=={part.strip()}.*'",
            )
        specs.append(Specifier.parse(part))
    return SpecifierSet(tuple(specs))
