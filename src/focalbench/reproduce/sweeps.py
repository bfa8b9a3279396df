"""Paper-table sweep files (``sweeps/table*.yaml``): loading, validation, expansion into runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from focalbench.paths import SWEEPS_DIR
from focalbench.reproduce.table import Row, Table
from focalbench.reproduce.analysis import validate_rule  # the verdict rules live with the analysis



def table_files(sweeps_dir: Path = SWEEPS_DIR) -> dict[str, str]:
    """Table id -> file name, for every ``table*.yaml`` of ``sweeps_dir`` (its ``table:`` key is the id).

    A new paper table is one new YAML file there: nothing in the code lists the tables."""
    found: dict[str, str] = {}
    for path in sorted(Path(sweeps_dir).glob("table*.yaml"), key=lambda p: p.name):
        try:
            tid = (yaml.safe_load(path.read_text()) or {}).get("table")
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise SweepFileError(f"{path}: cannot read sweep file ({e.__class__.__name__}: {e})") from None
        if tid is None:
            raise SweepFileError(f"{path}: missing key 'table' (the table's id, e.g. 1a)")
        tid = str(tid)
        if tid in found:
            raise SweepFileError(f"{path}: table {tid!r} is also defined in {found[tid]}")
        found[tid] = path.name
    return found


DEFAULT_TABLES = ("1a", "1b", "1c", "1d")
PAPER_KEYS = ("AP", "AP50", "AP75")
FIGURE_KINDS = ("line", "bars", "anchors", "speed")  # focalbench.reproduce.figures: line_, bar_, anchors_, speed_figure


class SweepFileError(ValueError):
    pass


TABLE_FILES = table_files()  # the repository's tables, read once at import


def load_table(table_id: str, sweeps_dir: Path = SWEEPS_DIR) -> Table:
    files = TABLE_FILES if Path(sweeps_dir) == SWEEPS_DIR else table_files(sweeps_dir)
    if str(table_id) not in files:
        raise SweepFileError(f"TABLES: unknown table {table_id!r}; allowed: {' '.join(files)}")
    path = Path(sweeps_dir) / files[str(table_id)]
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
    figure = data.get("figure", "bars")
    if figure not in FIGURE_KINDS:
        raise SweepFileError(f"{path}: figure {figure!r} is not one of {', '.join(FIGURE_KINDS)}")
    baseline = data.get("baseline")
    if baseline is not None and baseline not in names:
        raise SweepFileError(f"{path}: baseline {baseline!r} is not a row name")
    verdict = data.get("verdict")
    if verdict is not None:
        if not isinstance(verdict, dict) or not isinstance(verdict.get("rule"), str):
            raise SweepFileError(f"{path}: verdict must be a mapping with a 'rule' name and its parameters")
        try:
            validate_rule(verdict, [r.name for r in rows])
        except ValueError as e:
            raise SweepFileError(f"{path}: verdict: {e}") from None
    min_seeds = data.get("min_seeds", 1)
    if not isinstance(min_seeds, int) or isinstance(min_seeds, bool) or min_seeds < 1:
        raise SweepFileError(f"{path}: min_seeds={min_seeds!r} must be an integer >= 1")
    return Table(str(data["table"]), data["title"], data["claim"], tuple(rows), bool(data.get("deep", False)),
                 data.get("x_label"), path, dict(verdict) if verdict else None, figure, baseline, min_seeds)


def load_tables(table_ids, sweeps_dir: Path = SWEEPS_DIR) -> list[Table]:
    return [load_table(t, sweeps_dir) for t in table_ids]
