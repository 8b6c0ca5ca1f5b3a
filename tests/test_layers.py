"""The import-linter contracts of pyproject.toml hold on this tree, and each one breaks on a planted import.

The packages (their .py files) and pyproject.toml are copied into a temporary directory, one forbidden
import of each kind is planted there, and `lint-imports` must report every contract broken, naming it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract["name"] for contract in CONFIG["contracts"]}

# Contract id -> (file in the copied tree, line appended to it): each breaks that contract alone.
PLANTED = {
    "layers": ("shard/_planted_layers.py", "from launcher import model_files"),
    "router-launcher-no-torch": ("router/_planted_torch.py", "import torch"),
    "shard-no-http": ("shard/_planted_http.py", "import aiohttp"),
    "common-stdlib": ("common/_planted_grpc.py", "import grpc"),
    "bench-client": ("bench/runner.py", "import torch"),  # reached from bench.cli
    "acyclic": ("launcher/_planted_a.py", "from launcher import _planted_b"),
}
PLANTED_EXTRA = {"launcher/_planted_b.py": "from launcher import _planted_a"}  # closes the cycle


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "lint-imports"
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    # The copied tree, not the editable install's, is what the packages must resolve to.
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "200"}  # one summary line per contract
    return subprocess.run([*command, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def verdicts(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    found = {}
    for line in output.splitlines():
        for name in CONTRACTS.values():
            if line.strip().startswith(name) and line.strip().endswith(("KEPT", "BROKEN")):
                found[name] = line.strip().rsplit(" ", 1)[1]
    return found


def _all_but_python(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or (Path(folder) / n).is_dir())]


def test_every_contract_is_planted() -> None:
    assert set(PLANTED) == set(CONTRACTS)


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result.stdout) == dict.fromkeys(CONTRACTS.values(), "KEPT")


def test_a_planted_import_breaks_each_contract(tmp_path: Path) -> None:
    for package in CONFIG["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=_all_but_python)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for path, line in [*PLANTED.values(), *PLANTED_EXTRA.items()]:
        with open(tmp_path / path, "a") as handle:
            handle.write(f"\n{line}  # planted by tests/test_layers.py\n")

    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert verdicts(result.stdout) == dict.fromkeys(CONTRACTS.values(), "BROKEN"), result.stdout
    for path, _ in PLANTED.values():
        assert Path(path).stem in result.stdout, (path, result.stdout)  # the report names the planted module
