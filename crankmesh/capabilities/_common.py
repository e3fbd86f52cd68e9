"""Pieces shared by offers and requirements: construction with error paths, extensions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from ._errors import CapabilitySpecError
from ._registry import _NAME_RE, RESERVED_NAMES, CapabilityRegistry
from ._wire import FrozenMap, FrozenWire, freeze, join, kind, thaw

T = TypeVar("T")

setattr_frozen: Final = object.__setattr__


def build(path: str, factory: Callable[..., T], /, **kwargs: Any) -> T:
    """Construct a model, prefixing any validation error with where the input came from."""
    try:
        return factory(**kwargs)
    except CapabilitySpecError as exc:
        raise CapabilitySpecError(join(path, exc.path) if exc.path else path, exc.problem) from None


def extension_name(name: object, path: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CapabilitySpecError(
            path, f"custom capability name {name!r} must be a lower-case identifier"
        )
    if name in RESERVED_NAMES:
        raise CapabilitySpecError(path, f"{name!r} is a standard type, not an extension")
    return name


def freeze_extensions(value: Mapping[str, object], path: str) -> FrozenMap[FrozenWire]:
    if not isinstance(value, Mapping):
        raise CapabilitySpecError(path, f"expected a mapping of extensions, got {kind(value)}")
    out: dict[str, FrozenWire] = {}
    for name, raw in value.items():
        key = extension_name(name, path)
        out[key] = freeze(raw, join(path, key))
    return FrozenMap(out)


def check_extension(
    registry: CapabilityRegistry | None,
    name: str,
    value: FrozenWire,
    path: str,
    *,
    side: str,
) -> None:
    """Let a registered matcher validate a custom value early (``side``: requirement/offer)."""
    matcher = None if registry is None else registry.get(name)
    if matcher is None:
        return
    parse = matcher.parse_requirement if side == "requirement" else matcher.parse_offer
    try:
        parse(thaw(value))
    except (ValueError, TypeError) as exc:
        raise CapabilitySpecError(path, f"invalid {name} {side}: {exc}") from None
