"""``Problem``: one way a machine's state differs from what a scenario expects.

Shared by the general comparisons (``checks``) and the job comparisons
(``jobcheck``); ``ui`` shows a list of them as a table.

Plain data: it compares nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One way a machine's state differs from what the scenario expects."""

    machine: str
    key: str
    message: str
    expected: Any = None
    actual: Any = None
    missing: tuple = ()        # expected, not found
    unexpected: tuple = ()     # found, not expected

    def __str__(self) -> str:
        where = f"{self.machine}.{self.key}" if self.key else self.machine
        text = f"{where}: {self.message}"
        if self.missing:
            text += f"; missing {list(self.missing)}"
        if self.unexpected:
            text += f"; unexpected {list(self.unexpected)}"
        if not self.missing and not self.unexpected and self.expected is not None:
            text += f"; expected {self.expected!r}, got {self.actual!r}"
        return text
