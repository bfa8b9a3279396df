"""A paper table as the reproduction sees it: its rows (overrides, the paper's numbers), claim, verdict rule
and figure kind. ``reproduce/sweeps.py`` reads them from ``sweeps/table*.yaml``; the analysis, the report and
the figures take them from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]
    paper: dict
    extra: dict = field(default_factory=dict)  # x, sc, ar: what the figures plot against


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    claim: str
    rows: tuple[Row, ...]
    deep: bool = False
    x_label: str | None = None
    path: Path | None = None
    verdict: dict | None = None     # {rule: <name in analysis.RULES>, ...the rule's parameters}
    figure: str = "bars"            # one of FIGURE_KINDS
    baseline: str | None = None     # row the figures plot differences against (default: the first row)
    min_seeds: int = 1              # seeds the verdict needs (an equivalence test's power): a study of several
                                    # seeds runs at least these

    def seeds_for(self, seeds: list[int]) -> list[int]:
        """The seeds this table runs when the command asks for ``seeds``: a single seed stays a single-seed look
        (nothing is decided on one seed without the profile's noise sd); a study of several seeds runs at
        least ``min_seeds``."""
        return list(seeds) if len(seeds) <= 1 or len(seeds) >= self.min_seeds else list(range(self.min_seeds))

    @property
    def baseline_row(self) -> str:
        return self.baseline or self.rows[0].name

    @property
    def figure_file(self) -> str:
        """File stem of the table's figure under figures/."""
        if self.figure == "line" and self.x_label:
            return f"table{self.id}_ap_vs_{self.x_label}"
        return f"table{self.id}_anchors" if self.figure == "anchors" else f"table{self.id}"

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"table {self.id} has no row {name!r}")
