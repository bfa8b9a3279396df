"""Paper-table sweep files (``sweeps/table*.yaml``): loading, validation, expansion into runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

SWEEPS_DIR = Path(__file__).resolve().parents[3] / "sweeps"
TABLE_FILES = {
    "1a": "table1a_alpha.yaml",
    "1b": "table1b_gamma.yaml",
    "1c": "table1c_anchors.yaml",
    "1d": "table1d_ohem.yaml",
    "3": "table3_flstar.yaml",
}
DEFAULT_TABLES = ("1a", "1b", "1c", "1d")
PAPER_KEYS = ("AP", "AP50", "AP75")


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

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"table {self.id} has no row {name!r}")


class SweepFileError(ValueError):
    pass


def load_table(table_id: str, sweeps_dir: Path = SWEEPS_DIR) -> Table:
    if table_id not in TABLE_FILES:
        raise SweepFileError(f"TABLES: unknown table {table_id!r}; allowed: {' '.join(TABLE_FILES)}")
    path = Path(sweeps_dir) / TABLE_FILES[table_id]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepFileError(f"{path}: cannot read sweep file ({e.__class__.__name__}: {e})") from None
    for key in ("table", "title", "claim", "rows"):
        if key not in data:
            raise SweepFileError(f"{path}: missing key {key!r}")
    rows, names = [], set()
    for i, r in enumerate(data["rows"]):
        for key in ("name", "overrides", "paper"):
            if key not in r:
                raise SweepFileError(f"{path}: rows[{i}] misses key {key!r}")
        if r["name"] in names:
            raise SweepFileError(f"{path}: rows[{i}] repeats the name {r['name']!r}")
        missing = [k for k in PAPER_KEYS if k not in r["paper"]]
        if missing:
            raise SweepFileError(f"{path}: rows[{i}] ({r['name']}) paper misses {missing}")
        names.add(r["name"])
        extra = {k: v for k, v in r.items() if k not in ("name", "overrides", "paper")}
        rows.append(Row(r["name"], tuple(str(o) for o in r["overrides"]), dict(r["paper"]), extra))
    return Table(str(data["table"]), data["title"], data["claim"], tuple(rows), bool(data.get("deep", False)),
                 data.get("x_label"), path)


def load_tables(table_ids, sweeps_dir: Path = SWEEPS_DIR) -> list[Table]:
    return [load_table(t, sweeps_dir) for t in table_ids]
