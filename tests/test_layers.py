"""The layer rule (docs/architecture.md), checked by import-linter against pyproject.toml.

``test_contracts_hold`` is the check itself: it fails with import-linter's report, which names
the offending import chain, when a module imports one above its layer or a lower layer imports
Ray. The other tests keep that check honest: the contracts say what the docs say, every ignored
import carries its reason, and the same check does fail on a copy of the package with an upward
import added.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="the layer check needs import-linter "
                    "(pip install 'raglign[test]')")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``raglign`` package and the contracts in ``root``/pyproject.toml,
    without a cache (nothing written to the tree)."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from importlinter.cli import lint_imports_command; "
                                           "lint_imports_command()"]
    env = {**os.environ, "PYTHONPATH": str(root)}  # a copy's raglign wins over the installed one
    return subprocess.run([*cmd, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def contracts() -> dict[str, dict]:
    with open(REPO / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, (
        "an import breaks the layer rule (docs/architecture.md); move the imported code down, or "
        "import the other way round\n" + result.stdout + result.stderr)
    assert "0 broken" in result.stdout


def test_contracts_state_the_documented_layers():
    layers = [[m.strip() for m in re.split(r"[|:]", layer)] for layer in
              contracts()["layers"]["layers"]]
    level = {m: i for i, layer in enumerate(layers) for m in layer}  # 0 = top
    order = [["raglign.cli"], ["raglign.pipeline"], ["raglign.mining", "raglign.evaluate"],
             ["raglign.signals"],
             ["raglign.engine", "raglign.models", "raglign.objectives", "raglign.data",
              "raglign.metrics"],
             ["raglign.config"], ["raglign.errors"]]
    for above, below in zip(order, order[1:]):
        for a in above:
            for b in below:
                assert level[a] < level[b], f"{a} must be a layer above {b}"
    # Every module and package of raglign has a place, so a new one cannot escape the rule
    # unnoticed (raglign.gumbel is placed module by module: its pieces sit in three layers).
    top = {p.stem if p.is_file() else p.name for p in (REPO / "raglign").iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    placed = {m.split(".")[1] for m in level}
    assert top - placed == set(), f"not placed in the layers contract: {sorted(top - placed)}"
    gumbel = {p.stem for p in (REPO / "raglign" / "gumbel").glob("*.py")} - {"__init__"}
    assert {f"raglign.gumbel.{m}" for m in gumbel} <= set(level)


def test_ray_is_forbidden_below_the_pipeline():
    ray = contracts()["ray-at-the-edges"]
    assert ray["type"] == "forbidden" and ray["forbidden_modules"] == ["ray"]
    sources = set(ray["source_modules"])
    assert {"raglign.engine", "raglign.models", "raglign.objectives", "raglign.data",
            "raglign.metrics", "raglign.signals", "raglign.mining",
            "raglign.evaluate"} <= sources
    assert not sources & {"raglign.pipeline", "raglign.ray_session", "raglign.cli"}


def test_every_ignored_import_says_why():
    """No silent weakening: each ``ignore_imports`` entry has a comment right above it (a
    reason, or the issue-13 item that removes it)."""
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    start = lines.index("[tool.importlinter]")
    entry = re.compile(r'^\s*"raglign[\w.]* -> [\w.]+",?\s*$')
    in_ignores, previous = False, ""
    checked = 0
    for line in lines[start:]:
        stripped = line.strip()
        if stripped.startswith("ignore_imports"):
            in_ignores, previous = True, ""
            continue
        if in_ignores and stripped == "]":
            in_ignores = False
        if in_ignores and entry.match(line):
            assert previous.startswith("#") or previous.startswith('"'), line
            checked += 1
        if in_ignores and stripped:
            previous = stripped
    # An entry directly after another shares its comment; the first of each run needs one.
    assert checked >= 1


@pytest.mark.parametrize("upward, broken", [
    ("import raglign.pipeline.train", "raglign.objectives.common -> raglign.pipeline.train"),
    ("import raglign.signals.base", "raglign.objectives.common -> raglign.signals.base"),
    ("import ray", "raglign.objectives.common -> ray"),
])
def test_an_upward_import_fails_the_check(tmp_path, upward, broken):
    """The same check, on a copy of the package with one bad import added (inside a function,
    where the code base puts its lazy imports), reports the contract broken and names it."""
    shutil.copytree(REPO / "raglign", tmp_path / "raglign",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "raglign" / "objectives" / "common.py", "a") as f:
        f.write(f"\n\ndef _upward():\n    {upward}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert broken in result.stdout, result.stdout
