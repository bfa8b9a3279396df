"""Every command the README shows is checked: each training command composes and validates exactly as the CLI
would run it (sweep values: their first choice), each `make` target exists and dry-runs, and the other entry
points accept their options. The commands that train for real are run by the tests named in COVERED."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from focalbench.config_schema import ConfigError
from focalbench.train import compose, optional_groups

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SWEEP_FUNCTION = re.compile(r"^(interval|int|tag|choice|range)\(")
# system administration, not focalbench (PostgreSQL set-up)
NOT_OURS = ("sudo ",)


def readme_commands() -> list[tuple[str, str]]:
    """(working directory relative to the repo, command) for each command line of the README's bash blocks."""
    out, cwd = [], "."
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if not line or line.startswith("#") or line.startswith(NOT_OURS):
                continue
            if line.startswith("cd "):
                cwd = line[3:].strip()
                continue
            out.append((cwd, line))
    return out


def train_overrides(tokens: list[str], cwd: str) -> list[str] | None:
    """The overrides of one job of a training command (None when the command holds a placeholder)."""
    overrides, config_dir, it = [], None, iter(tokens)
    for tok in it:
        if tok in ("-m", "--multirun"):
            continue
        if tok in ("--config-dir", "-cd"):
            config_dir = (ROOT / cwd / next(it)).resolve()
            continue
        if tok == "..." or "<" in tok:
            return None
        key, _, value = tok.partition("=")
        if SWEEP_FUNCTION.match(value):
            continue  # a search dimension: the sweeper chooses the value
        if "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]  # a basic sweep: its first job
        overrides.append(f"{key}={value}")
    if config_dir is not None:
        overrides.insert(0, f"hydra.searchpath=[file://{config_dir}]")
    return optional_groups(overrides)


COMMANDS = readme_commands()
TRAIN = [(c, cmd) for c, cmd in COMMANDS if cmd.startswith(("python -m focalbench.train", "focalbench-train"))]


def test_the_readme_has_the_commands_we_check():
    kinds = {cmd.split()[0] if cmd.startswith("make") else " ".join(cmd.split()[:3]) for _, cmd in COMMANDS}
    assert "make" in kinds and "python -m focalbench.train" in kinds and len(TRAIN) >= 20
    unchecked = [cmd for _, cmd in COMMANDS if not cmd.startswith(
        ("python -m focalbench.train", "focalbench-train", "make ", "python -m focalbench.eval",
         "python -m focalbench.predict", "python -m focalbench.data"))]
    assert not unchecked, f"README commands this test does not check: {unchecked}"


@pytest.mark.parametrize("cwd, cmd", TRAIN, ids=[cmd[:80] for _, cmd in TRAIN])
def test_training_command_composes_and_validates(cwd, cmd, monkeypatch):
    tokens = shlex.split(cmd)[3 if cmd.startswith("python") else 1:]
    overrides = train_overrides(tokens, cwd)
    if overrides is None:
        pytest.skip("the command holds a placeholder (..., <...>)")
    monkeypatch.syspath_prepend(str(ROOT / cwd))  # a user's own parts beside their config folder
    try:
        compose(overrides)  # raises ConfigError (one line) on any key, value or group the CLI would refuse
    except ConfigError as e:
        if "needs the tensorboard package" in str(e):  # the README's own note: pip install tensorboard
            pytest.skip(str(e))
        raise


@pytest.mark.parametrize("target", sorted({cmd.split()[1] for _, cmd in COMMANDS if cmd.startswith("make ")}))
def test_make_target_exists_and_dry_runs(target):
    p = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("module", ["eval", "predict", "data"])
def test_other_entry_points_accept_the_readme_options(module, capsys):
    import importlib

    main = importlib.import_module(f"focalbench.{module}").main if module != "data" else \
        importlib.import_module("focalbench.data.__main__").main
    for _, cmd in COMMANDS:
        if not cmd.startswith(f"python -m focalbench.{module} "):
            continue
        args = shlex.split(cmd)[3:]
        with pytest.raises(SystemExit) as e:  # --help after the README's own options: parsed, then exits 0
            main([*(a for a in args if "<" not in a), "--help"] if module != "data" else [*args, "--help"])
        assert e.value.code == 0, cmd
