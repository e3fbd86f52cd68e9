"""The one error this package raises for malformed input."""

from __future__ import annotations

from crankmesh.protocol.errors import CrankmeshError


class CapabilitySpecError(CrankmeshError, ValueError):
    """A capability offer, requirement or version constraint is malformed.

    ``path`` says where in the input (``"requirements.gpu.min_memory_gb"``; empty for the
    whole input) and ``problem`` says what is wrong and how to fix it.  It is a
    :class:`ValueError`, so code that validates user input can catch it as one.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)

    def __reduce__(self) -> tuple[type[CapabilitySpecError], tuple[str, str]]:
        return (type(self), (self.path, self.problem))
