"""The Aff-wild2 releases of the ABAW challenges (2021-2025): which expressions each labels and
which formula each year's challenge scores a track with.

The layouts on disk are the readers' business (data/affwild); this module holds what a task
set and a score need: the 2021 release (ABAW2, the paper's) labels 7 expressions, every later
one 8, adding "Other" as class 7.
"""

from __future__ import annotations

from dataclasses import dataclass

from emodistill.core.errors import InputError


@dataclass(frozen=True)
class Release:
    """One ABAW edition's Aff-wild2 release."""

    name: str  # "ABAW2", ..., "ABAW8"
    year: int  # the year of the challenge
    expressions: int  # 7 (2021) or 8 (with "Other", 2022 onwards)
    # Which year's scoring formulas apply: "2021" (F1 mixed with accuracy) or "2022" (F1 alone,
    # and a multi-task score that sums the three tracks').
    scoring: str
    single_task: bool  # False for the editions whose Aff-wild2 tracks were multi-task only

    @property
    def label(self) -> str:
        """"ABAW6 (2024)"."""
        return f"{self.name} ({self.year})"


RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("ABAW2", 2021, 7, "2021", True),
    Release("ABAW3", 2022, 8, "2022", True),
    Release("ABAW4", 2022, 8, "2022", False),
    Release("ABAW5", 2023, 8, "2022", True),
    Release("ABAW6", 2024, 8, "2022", True),
    Release("ABAW7", 2024, 8, "2022", False),
    Release("ABAW8", 2025, 8, "2022", True),
)}
PAPER_RELEASE = "ABAW2"  # the paper's data, and the release of any run that recorded none


def release(name: str) -> Release:
    """A release by name, in any case ("abaw6", "ABAW6"); one sentence for an unknown one."""
    key = name.strip().upper()
    if key not in RELEASES:
        raise InputError(f"unknown release {name!r}; expected one of {', '.join(RELEASES)}")
    return RELEASES[key]
