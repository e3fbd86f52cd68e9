"""The capability taxonomy: the standard types, their tokens, aliases and orderings.

Standard capability types (seed 003): ``gpu`` (type cuda/rocm/metal, model, memory,
compute_capability), ``cpu`` (cores, arch, features), ``memory``, ``storage``, ``network``
(bandwidth, egress, region), ``codecs`` (hardware/software), ``frameworks`` (pytorch,
tensorflow, onnx, numpy … with version constraints), ``env_profile`` and ``isolation``.
Anything else is a custom type, registered in a :class:`CapabilityRegistry`.
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import Final, NamedTuple

from ._errors import CapabilitySpecError
from ._wire import as_int, as_str, kind

STANDARD_TYPES: Final = (
    "gpu",
    "cpu",
    "memory",
    "storage",
    "network",
    "codecs",
    "frameworks",
    "env_profile",
    "isolation",
)

_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,63}$")


def _token(value: object, path: str, what: str) -> str:
    text = as_str(value, path, max_len=64).lower()
    if not _NAME_RE.match(text):
        raise CapabilitySpecError(
            path, f"{text!r} is not a valid {what} name (letters, digits, '_', '.', '+', '-')"
        )
    return text


def _choice(value: object, path: str, choices: dict[str, str], what: str) -> str:
    if not isinstance(value, str):
        raise CapabilitySpecError(path, f"expected a string ({what}), got {kind(value)}")
    token = choices.get(value.strip().lower())
    if token is None:
        options = ", ".join(sorted(set(choices.values())))
        raise CapabilitySpecError(path, f"unknown {what} {value!r}; expected one of: {options}")
    return token


# --------------------------------------------------------------------------- gpu


class GpuType(StrEnum):
    """The GPU programming platform: NVIDIA CUDA, AMD ROCm or Apple Metal."""

    CUDA = "cuda"
    ROCM = "rocm"
    METAL = "metal"

    @classmethod
    def parse(cls, value: object, path: str = "type") -> GpuType:
        """Accepts the tokens and the aliases ``nvidia``, ``amd``, ``hip``, ``mps``, ``apple``."""
        return cls(_choice(value, path, _GPU_ALIASES, "gpu type"))


_GPU_ALIASES: Final = {
    "cuda": "cuda",
    "nvidia": "cuda",
    "rocm": "rocm",
    "amd": "rocm",
    "hip": "rocm",
    "metal": "metal",
    "mps": "metal",
    "apple": "metal",
}


class ComputeCapability(NamedTuple):
    """A CUDA compute capability such as 8.6; on the wire the string ``"8.6"``."""

    major: int
    minor: int = 0

    @classmethod
    def parse(
        cls, value: object, path: str = "compute_capability", *, strict: bool = False
    ) -> ComputeCapability:
        """``"8.6"``; in human input also ``8.6``, ``8`` or ``[8, 6]``."""
        if not strict:
            if isinstance(value, float):
                value = repr(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                return cls(as_int(value, path, strict=False))
            elif isinstance(value, list | tuple) and len(value) == 2:
                return cls(
                    as_int(value[0], f"{path}[0]", strict=False),
                    as_int(value[1], f"{path}[1]", strict=False),
                )
        if isinstance(value, str):
            m = re.fullmatch(r"\s*([0-9]{1,3})(?:\.([0-9]{1,3}))?\s*", value)
            if m:
                return cls(int(m[1]), int(m[2] or 0))
        raise CapabilitySpecError(
            path, f"expected a compute capability like '8.6', got {kind(value)}"
        )

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


# --------------------------------------------------------------------------- levels


class IsolationLevel(IntEnum):
    """How strongly a job is isolated; ordered ``none < basic < standard < strict``."""

    NONE = 0
    BASIC = 1
    STANDARD = 2
    STRICT = 3

    @property
    def token(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object, path: str = "isolation") -> IsolationLevel:
        return cls[_choice(value, path, _ISOLATION, "isolation level").upper()]


_ISOLATION: Final = {level.name.lower(): level.name.lower() for level in IsolationLevel}


class StorageType(IntEnum):
    """Storage medium, ordered by speed ``hdd < ssd < nvme``; a requirement is a minimum."""

    HDD = 0
    SSD = 1
    NVME = 2

    @property
    def token(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object, path: str = "type") -> StorageType:
        return cls[_choice(value, path, _STORAGE, "storage type").upper()]


_STORAGE: Final = {"hdd": "hdd", "ssd": "ssd", "nvme": "nvme", "disk": "hdd", "flash": "ssd"}


# --------------------------------------------------------------------------- codecs


class CodecSupport(StrEnum):
    """How an executor implements a codec."""

    HARDWARE = "hardware"
    SOFTWARE = "software"

    @classmethod
    def parse(cls, value: object, path: str) -> CodecSupport:
        return cls(_choice(value, path, _SUPPORT, "codec support"))


_SUPPORT: Final = {
    "hardware": "hardware",
    "hw": "hardware",
    "software": "software",
    "sw": "software",
}


class CodecNeed(StrEnum):
    """What a job needs of a codec: a hardware implementation, or any implementation."""

    HARDWARE = "hardware"
    ANY = "any"

    @classmethod
    def parse(cls, value: object, path: str) -> CodecNeed:
        return cls(_choice(value, path, _NEED, "codec need"))


_NEED: Final = {"hardware": "hardware", "hw": "hardware", "any": "any", "software": "any"}


# --------------------------------------------------------------------------- names

_CODEC_ALIASES: Final = {"avc": "h264", "h.264": "h264", "hevc": "h265", "h.265": "h265"}
_FRAMEWORK_ALIASES: Final = {"torch": "pytorch", "tf": "tensorflow", "np": "numpy"}
_ARCH_ALIASES: Final = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "arm64": "aarch64",
    "armv8": "aarch64",
}


def codec_name(value: object, path: str) -> str:
    """Lower-case codec name; ``avc`` → ``h264``, ``hevc`` → ``h265``."""
    name = _token(value, path, "codec")
    return _CODEC_ALIASES.get(name, name)


def framework_name(value: object, path: str) -> str:
    """PEP 503-normalised framework name; ``torch`` → ``pytorch``, ``tf`` → ``tensorflow``."""
    name = re.sub(r"[-_.]+", "-", _token(value, path, "framework"))
    return _FRAMEWORK_ALIASES.get(name, name)


def arch_name(value: object, path: str) -> str:
    """CPU architecture as ``uname -m`` spells it on Linux; ``amd64`` → ``x86_64``."""
    name = _token(value, path, "cpu architecture")
    return _ARCH_ALIASES.get(name, name)


def plain_name(value: object, path: str, what: str) -> str:
    """A lower-case token: regions, CPU features."""
    return _token(value, path, what)


def profile_name(value: object, path: str) -> str:
    """An environment profile name, kept as written (profiles are operator-chosen)."""
    text = as_str(value, path, max_len=64)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", text):
        raise CapabilitySpecError(path, f"{text!r} is not a valid env profile name")
    return text
