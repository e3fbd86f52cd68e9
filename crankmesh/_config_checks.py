"""What both the settings (``config.py``) and the daemon (``node.py``) need: the
configuration error and the advert timing check.  Kept apart so that ``node`` does not
import ``config`` (``config`` builds a ``NodeConfig``: the dependency runs one way)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .protocol.errors import CrankmeshError

__all__ = ["MAX_ADVERT_TTL_S", "ConfigError", "advert_timing_problems"]

#: The longest advert TTL peers accept (RFC 0001 §7).
MAX_ADVERT_TTL_S: Final = 120


class ConfigError(CrankmeshError, ValueError):
    """The node configuration is not acceptable; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], *, where: str | None = None) -> None:
        self.problems = tuple(problems)
        head = "invalid crankmesh configuration" + (f" in {where}" if where else "")
        if len(self.problems) == 1:
            text = f"{head}: {self.problems[0]}"
        else:
            text = head + ":\n  - " + "\n  - ".join(self.problems)
        super().__init__(text)


def advert_timing_problems(interval_s: object, ttl_s: object) -> list[tuple[str, str]]:
    """What is wrong with an advert interval and TTL, as (setting, message); empty if fine.

    Peers drop an advert that claims to live longer than 120 s (RFC 0001 §7), which would
    leave the node invisible; a TTL shorter than the interval makes it flicker out of every
    directory between heartbeats.
    """
    problems: list[tuple[str, str]] = []
    for name, value in (("advert_interval_s", interval_s), ("advert_ttl_s", ttl_s)):
        if not isinstance(value, int | float) or not 0 < value <= MAX_ADVERT_TTL_S:
            problems.append(
                (name, f"must be a number of seconds in (0, {MAX_ADVERT_TTL_S}], got {value!r}")
            )
    if (
        isinstance(interval_s, int | float)
        and isinstance(ttl_s, int | float)
        and ttl_s < interval_s
    ):
        problems.append(
            ("advert_ttl_s", "must not be shorter than advert_interval_s (peers would flap)")
        )
    return problems
