"""The type check ([tool.mypy] in pyproject.toml): the tree passes, and a type error fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_tree_type_checks() -> None:
    done = mypy()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout


def test_a_type_error_fails_the_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from decimal import Decimal\n\nprice: Decimal = 1.1  # a float where money goes\n")
    done = mypy("--config-file", str(ROOT / "pyproject.toml"), str(bad))
    assert done.returncode == 1 and "Incompatible types in assignment" in done.stdout, done.stdout
