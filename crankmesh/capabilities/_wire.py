"""Wire-safe values and the small readers every parser in this package shares.

Two input modes run through the same readers:

* *human* (``strict=False``): what people write in Python or YAML — ``memory_gb`` floats,
  aliases, shorthands.  Sizes are converted to integer MiB here, once.
* *wire* (``strict=True``): the canonical form produced by ``to_wire()`` — integers only, no
  floats anywhere, no ``*_gb`` keys, no shorthands.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Final, TypeAlias, TypeVar

from ._errors import CapabilitySpecError

WireValue: TypeAlias = "None | bool | int | str | bytes | list[WireValue] | dict[str, WireValue]"
"""What ``to_wire()`` produces: canonical-msgpack material, never a float."""

FrozenWire: TypeAlias = (
    "None | bool | int | str | bytes | tuple[FrozenWire, ...] | FrozenMap[FrozenWire]"
)
"""A :data:`WireValue` made immutable and hashable (lists become tuples)."""

MAX_INT: Final = 2**63 - 1
MAX_STR: Final = 256
MAX_ITEMS: Final = 1024

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """An immutable, hashable mapping with string keys kept in sorted order."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        items = dict(data)
        self._data: dict[str, V] = {k: items[k] for k in sorted(items)}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._data)


MAX_DEPTH: Final = 16


def freeze(value: object, path: str, _depth: int = 0) -> FrozenWire:
    """Validate a wire-safe value and make it immutable; floats are refused."""
    if _depth > MAX_DEPTH:
        raise CapabilitySpecError(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int | str | bytes):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise CapabilitySpecError(path, f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        raise CapabilitySpecError(
            path,
            f"floats cannot go on the wire (got {value!r}); use an integer in a finer unit "
            "(MiB, ms, parts per million)",
        )
    if isinstance(value, list | tuple):
        return tuple(freeze(v, f"{path}[{i}]", _depth + 1) for i, v in enumerate(value))
    if isinstance(value, Mapping):
        out: dict[str, FrozenWire] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CapabilitySpecError(path, f"keys must be strings, got {k!r}")
            out[k] = freeze(v, join(path, k), _depth + 1)
        return FrozenMap(out)
    raise CapabilitySpecError(path, f"expected a wire-safe value, got {kind(value)}")


def thaw(value: FrozenWire) -> WireValue:
    """The plain ``list``/``dict`` form of a frozen value, as it goes on the wire."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, FrozenMap):
        return {k: thaw(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- helpers


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def kind(value: object) -> str:
    """``a string 'x'``, ``a float 1.5`` … for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean {value!r}"
    if isinstance(value, int):
        return f"an integer {value!r}"
    if isinstance(value, float):
        return f"a float {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string {shown!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def unknown_key(path: str, key: str, known: Collection[str], what: str) -> CapabilitySpecError:
    guess = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else f"; known keys: {', '.join(sorted(known))}"
    return CapabilitySpecError(join(path, key), f"unknown {what} key {key!r}{hint}")


class Fields:
    """Reads a mapping's keys once each, so that leftover (unknown) keys can be reported."""

    __slots__ = ("_data", "_path", "_unused")

    def __init__(self, data: object, path: str, what: str) -> None:
        if not isinstance(data, Mapping):
            raise CapabilitySpecError(path, f"expected a mapping of {what}, got {kind(data)}")
        for key in data:
            if not isinstance(key, str):
                raise CapabilitySpecError(path, f"keys must be strings, got {key!r}")
        self._data: Mapping[str, object] = data
        self._path = path
        self._unused: dict[str, None] = dict.fromkeys(data)

    @property
    def path(self) -> str:
        return self._path

    def at(self, key: str) -> str:
        return join(self._path, key)

    def pop(self, key: str) -> object:
        """The value under ``key`` (``None`` when absent or null), marking it as read."""
        self._unused.pop(key, None)
        return self._data.get(key)

    def pop_one(self, *keys: str) -> tuple[str, object] | None:
        """The single one of ``keys`` that is present, or None; two present is an error."""
        found = [(k, self.pop(k)) for k in keys]
        present = [(k, v) for k, v in found if v is not None]
        if len(present) > 1:
            names = " and ".join(repr(k) for k, _ in present)
            raise CapabilitySpecError(self._path, f"give only one of {names}")
        return present[0] if present else None

    def remaining(self) -> list[str]:
        return list(self._unused)

    def finish(self, known: Collection[str], what: str) -> None:
        """Raise for the first key nobody read."""
        for key in self._unused:
            raise unknown_key(self._path, key, known, what)


# --------------------------------------------------------------------------- scalars


def as_int(value: object, path: str, *, strict: bool, minimum: int = 0) -> int:
    if isinstance(value, float) and not strict and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= MAX_INT:
        return value
    raise CapabilitySpecError(path, f"expected an integer ≥ {minimum}, got {kind(value)}")


def as_size_mb(key: str, value: object, path: str, *, strict: bool) -> int:
    """An integer MiB from a ``*_mb`` value, or (human input only) a ``*_gb`` value."""
    if not key.endswith("_gb"):
        return as_int(value, path, strict=strict)
    if strict:  # pragma: no cover - wire readers never offer *_gb keys
        raise CapabilitySpecError(path, "sizes on the wire are integer MiB (*_mb keys)")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            mib = round(value * 1024)  # 1024 is a power of two: the product is exact
            if mib <= MAX_INT:
                return mib
    raise CapabilitySpecError(path, f"expected a non-negative number of GB, got {kind(value)}")


def as_bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise CapabilitySpecError(path, f"expected true or false, got {kind(value)}")


def as_str(value: object, path: str, *, max_len: int = MAX_STR) -> str:
    if not isinstance(value, str):
        raise CapabilitySpecError(path, f"expected a string, got {kind(value)}")
    text = value.strip()
    if not text:
        raise CapabilitySpecError(path, "expected a non-empty string")
    if len(text) > max_len:
        raise CapabilitySpecError(path, f"string longer than {max_len} characters")
    return text


def as_list(value: object, path: str, *, strict: bool, allow_scalar: bool = False) -> list[object]:
    """A list; a lone scalar counts as a one-item list where ``allow_scalar`` (human input)."""
    if isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise CapabilitySpecError(path, f"more than {MAX_ITEMS} items")
        return list(value)
    if allow_scalar and not strict and not isinstance(value, Mapping):
        return [value]
    raise CapabilitySpecError(path, f"expected a list, got {kind(value)}")


def fmt_gb(mb: int) -> str:
    """``16384`` → ``"16"``, ``1536`` → ``"1.5"`` (GB meaning GiB, as in the seed's shapes)."""
    if mb % 1024 == 0:
        return str(mb // 1024)
    text = f"{mb / 1024:.2f}".rstrip("0").rstrip(".")
    return text if text != "0" else f"{mb} MiB"
