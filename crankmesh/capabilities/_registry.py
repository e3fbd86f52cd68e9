"""Custom capability types, registered without touching the core (seed 003, taxonomy).

A custom type is a name plus a :class:`CapabilityMatcher`.  Once registered, the name may be
used as a top-level key in requirements and offers (``{"tpu": {"min_cores": 8}}``); on the wire
it travels under ``"extensions"``.  Values must be wire-safe: no floats.

Registries are plain objects: pass one to :meth:`Requirements.parse`, :meth:`CapabilityOffer.parse`
and :func:`match` so tests do not share state; :data:`default_registry` is used when none is given.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol, TypeVar

from ._errors import CapabilitySpecError

ReqT = TypeVar("ReqT")
OfferT = TypeVar("OfferT")

_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

RESERVED_NAMES: Final = frozenset(
    {
        "codecs",
        "cpu",
        "env_profile",
        "env_profiles",
        "extensions",
        "frameworks",
        "gpu",
        "gpus",
        "hardware_accel",
        "isolation",
        "memory",
        "memory_gb",
        "memory_mb",
        "min_memory_gb",
        "min_memory_mb",
        "network",
        "preferred",
        "region",
        "required",
        "storage",
    }
)
"""Keys the core uses; custom types cannot take them."""


class CapabilityMatcher(Protocol[ReqT, OfferT]):
    """How a custom capability type is parsed and matched.

    ``value`` is the plain wire-safe value (``dict``/``list``/``str``/``int``/``bool``/``None``)
    written under the type's name.  The parsers raise :class:`ValueError` (or ``TypeError``) for
    values they do not accept; ``match`` returns one human sentence per unmet need
    (``"needs tpu cores ≥ 8, executor has 4"``), or an empty list when the offer satisfies the
    requirement.  The matcher must be pure: no I/O, no state.
    """

    def parse_requirement(self, value: Any) -> ReqT: ...

    def parse_offer(self, value: Any) -> OfferT: ...

    def match(self, requirement: ReqT, offer: OfferT) -> list[str]: ...


class CapabilityRegistry:
    """Custom capability types by name.

    Registering is safe from several threads; lookups never block.
    """

    __slots__ = ("_lock", "_matchers")

    def __init__(self, matchers: Mapping[str, CapabilityMatcher[Any, Any]] | None = None) -> None:
        self._lock = threading.Lock()
        self._matchers: dict[str, CapabilityMatcher[Any, Any]] = {}
        for name, matcher in (matchers or {}).items():
            self.register(name, matcher)

    def register(
        self, name: str, matcher: CapabilityMatcher[Any, Any], *, replace: bool = False
    ) -> None:
        """Add a custom type.  Re-registering a name needs ``replace=True``."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CapabilitySpecError(
                "",
                f"custom capability name {name!r} must be lower-case letters, digits and '_', "
                "starting with a letter",
            )
        if name in RESERVED_NAMES:
            raise CapabilitySpecError(
                "", f"{name!r} is a standard capability type; pick another name for a custom one"
            )
        for method in ("parse_requirement", "parse_offer", "match"):
            if not callable(getattr(matcher, method, None)):
                raise TypeError(f"matcher for {name!r} has no callable {method}()")
        with self._lock:
            if name in self._matchers and not replace:
                raise CapabilitySpecError(
                    "",
                    f"capability type {name!r} is already registered; "
                    "pass replace=True to replace it",
                )
            self._matchers = {**self._matchers, name: matcher}

    def unregister(self, name: str) -> None:
        """Remove a custom type; removing an unknown name is an error."""
        with self._lock:
            if name not in self._matchers:
                raise KeyError(f"capability type {name!r} is not registered")
            self._matchers = {k: v for k, v in self._matchers.items() if k != name}

    def get(self, name: str) -> CapabilityMatcher[Any, Any] | None:
        return self._matchers.get(name)

    def copy(self) -> CapabilityRegistry:
        """An independent registry with the same types."""
        return CapabilityRegistry(self._matchers)

    def __contains__(self, name: object) -> bool:
        return name in self._matchers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._matchers))

    def __len__(self) -> int:
        return len(self._matchers)

    def __repr__(self) -> str:
        return f"CapabilityRegistry({sorted(self._matchers)!r})"


default_registry: Final = CapabilityRegistry()
"""The registry used when none is passed."""


def register_capability_type(
    name: str, matcher: CapabilityMatcher[Any, Any], *, replace: bool = False
) -> None:
    """Register a custom type in :data:`default_registry`."""
    default_registry.register(name, matcher, replace=replace)
