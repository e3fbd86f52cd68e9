"""Versions and version constraints, on ``packaging`` (PEP 440).

Versions are parsed, normalised and ordered by :class:`packaging.version.Version`
(``1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1``; trailing zeros do not matter; a local label
``+cpu`` sorts after the same public version), and specifiers are checked by
:class:`packaging.specifiers.Specifier`: comma-joined clauses with the operators
``>= > <= < == != ~=`` and ``==X.*`` / ``!=X.*`` wildcards.  This module keeps crankmesh's
API (:class:`Version`, :class:`Specifier`, :class:`SpecifierSet`), its errors
(:class:`CapabilitySpecError` with a message that says what to write) and its two choices:

- a specifier set does *not* exclude pre-releases by default.  Matching checks a version an
  executor already has installed, not one to choose, so ``2.2.0rc1`` satisfies ``>=2.1``.
  PEP 440's exclusive-ordering rules are kept, so ``<3`` is not satisfied by ``3.0.0rc1`` and
  ``>2`` is not satisfied by ``2.0.post1``; a candidate's local label is ignored unless the
  specifier has one.
- ``===`` (arbitrary equality) and a bare version without an operator are refused.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Final

from packaging.specifiers import InvalidSpecifier
from packaging.specifiers import Specifier as _PkgSpecifier
from packaging.version import InvalidVersion
from packaging.version import Version as _PkgVersion

from ._errors import CapabilitySpecError

_SPEC_RE: Final = re.compile(r"^\s*(~=|==|!=|<=|>=|<|>)\s*(\S.*?)\s*$")
_PRE_ORDER: Final = ("a", "b", "rc")


@dataclass(frozen=True, slots=True, eq=False)
class Version:
    """A PEP 440 version.  Compare with ``<``/``==``; ``str()`` gives the normalised form."""

    release: tuple[int, ...]
    epoch: int = 0
    pre: tuple[str, int] | None = None
    post: int | None = None
    dev: int | None = None
    local: str | None = None
    _v: _PkgVersion = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.release or any(n < 0 for n in self.release):
            raise CapabilitySpecError("", f"invalid release segment {self.release!r}")
        if self.pre is not None and self.pre[0] not in _PRE_ORDER:
            raise CapabilitySpecError("", f"invalid pre-release {self.pre!r}")
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
        try:
            object.__setattr__(self, "_v", _PkgVersion(text))
        except InvalidVersion:
            raise CapabilitySpecError("", f"{text!r} is not a version") from None

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``"2.13.0"``, ``"2.13.0+cpu"``, ``"2.0.0rc1"``, ``"v1.26"`` …"""
        return _parse_version(text)

    @classmethod
    def _of(cls, v: _PkgVersion) -> Version:
        return cls(v.release, v.epoch, v.pre, v.post, v.dev, v.local)

    # ------------------------------------------------------------------ ordering

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._v == other._v

    def __hash__(self) -> int:
        return hash(self._v)

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._v < other._v

    def __le__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._v <= other._v

    def __gt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._v > other._v

    def __ge__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._v >= other._v

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
        return self._v.is_prerelease

    @property
    def is_postrelease(self) -> bool:
        return self._v.is_postrelease

    def __str__(self) -> str:
        return str(self._v)


def _parse_version(text: object) -> Version:
    if not isinstance(text, str):
        raise CapabilitySpecError("", f"a version must be a string, got {text!r}")
    return _parse_version_text(text)


@functools.lru_cache(maxsize=1024)
def _parse_version_text(text: str) -> Version:
    try:
        return Version._of(_PkgVersion(text))
    except InvalidVersion:
        raise CapabilitySpecError(
            "", f"{text!r} is not a version (expected something like '2.1', '2.13.0+cpu', '2.0rc1')"
        ) from None


def _is_version(text: str) -> bool:
    try:
        _PkgVersion(text)
    except InvalidVersion:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Specifier:
    """One clause such as ``>=2.1``, ``~=1.26``, ``==2.*`` or ``!=2.0.1``."""

    operator: str
    version: Version
    wildcard: bool = False
    _spec: _PkgSpecifier = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        text = f"{self.operator}{self.version}{'.*' if self.wildcard else ''}"
        try:
            object.__setattr__(self, "_spec", _PkgSpecifier(text, prereleases=True))
        except InvalidSpecifier:
            raise CapabilitySpecError("", f"{text!r} is not a version specifier") from None

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
        return self._spec.contains(candidate._v, prereleases=True)

    def __str__(self) -> str:
        return f"{self.operator}{self.version}{'.*' if self.wildcard else ''}"


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
        if _is_version(part):
            raise CapabilitySpecError(
                "",
                f"{part.strip()!r} has no operator; write '=={part.strip()}', "
                f"'>={part.strip()}' or '=={part.strip()}.*'",
            )
        specs.append(Specifier.parse(part))
    return SpecifierSet(tuple(specs))
