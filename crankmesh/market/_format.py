"""Human formatting of money, durations, ratios and identifiers for explanations.

Pure string helpers; nothing here is signed or parsed back.
"""

from __future__ import annotations

import math


def short_did(did: str) -> str:
    """Shorten a DID for tables: ``did:key:z6MkiTBz…ooWp`` (prefix kept, middle elided)."""
    if did.startswith("did:key:") and len(did) > 24:
        ident = did[8:]
        return f"did:key:{ident[:8]}…{ident[-4:]}"
    if len(did) > 24:
        return f"{did[:16]}…{did[-4:]}"
    return did


def short_cid(cid: str) -> str:
    """Shorten a CID for tables: ``bafyreib…x2tq``."""
    if len(cid) > 16:
        return f"{cid[:8]}…{cid[-4:]}"
    return cid


def fmt_money(micros: int, currency: str) -> str:
    """``1200 µUSD`` — integer micro-units, exactly as priced."""
    return f"{micros} µ{currency}"


def fmt_us(us: float | None) -> str:
    """A duration given in microseconds, in the most readable unit (``850 µs``, ``12.5 ms``)."""
    if us is None or math.isnan(us):
        return "?"
    if math.isinf(us):
        return "unknown"
    if us < 1000:
        return f"{us:.4g} µs"
    if us < 1_000_000:
        return f"{us / 1000:.4g} ms"
    return f"{us / 1_000_000:.4g} s"


def fmt_ppm(ppm: int | None) -> str:
    """Parts per million as a percentage without floats: ``995000`` → ``99.5%``."""
    if ppm is None:
        return "?"
    whole, frac = divmod(ppm, 10_000)
    text = f"{whole}.{frac:04d}".rstrip("0").rstrip(".")
    return f"{text}%"


def fmt_ratio(x: float) -> str:
    """A load or reputation value with two decimals."""
    return f"{x:.2f}"


def plural(n: int, word: str) -> str:
    """``1 other`` / ``2 others`` for regular English plurals."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
