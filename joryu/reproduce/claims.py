"""What a reproduction reports: tables of per-seed values, claims with verdicts, the report.

The lowest floor of ``joryu.reproduce``: the protocol (which judges claims) and the registry
(which writes ``results/NAME.md`` / ``.json``) both build on these types, and nothing here imports
either of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def mean_std(values) -> tuple[float, float]:
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def fmt(values, digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


@dataclass
class Table:
    """One experiment: rows of per-seed measurements, shown as mean ± std."""

    title: str
    columns: list[str]  # measured quantities, e.g. ["test acc (%)"]
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # row -> column -> per-seed values
    note: str = ""

    def add(self, row: str, column: str, value: float) -> None:
        self.rows.setdefault(row, {}).setdefault(column, []).append(float(value))

    def values(self, row: str, column: str | None = None) -> list[float]:
        return self.rows[row][column or self.columns[0]]

    def markdown(self) -> str:
        head = ["setting", *[f"{c} (mean ± std)" for c in self.columns], "per seed"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for row, cols in self.rows.items():
            cells = [row] + [fmt(cols[c]) if c in cols else "" for c in self.columns]
            first = cols.get(self.columns[0], [])
            cells.append(", ".join(f"{x:.2f}" for x in first))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclass
class Claim:
    claim: str  # the paper's claim, in our words
    criterion: str  # when it counts as reproduced
    reproduced: bool
    evidence: str  # the measured numbers behind the verdict
    effect: dict = field(default_factory=dict)  # the paired comparison's numbers (joryu.stats), if judged by it
    refused: str = ""  # why the claim was not judged (e.g. its arms' measured budgets differ)

    @property
    def verdict(self) -> str:
        if self.refused:
            return "refused"
        return "reproduced" if self.reproduced else "not reproduced"


@dataclass
class Report:
    title: str
    paper: str
    setup: str
    tables: list[Table] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
