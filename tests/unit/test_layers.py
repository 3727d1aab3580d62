"""The import contracts in pyproject.toml ([tool.importlinter]): haexec -> engine -> coordinator
-> db -> common, never back; engine.market below the venues and engine.venue below the brokers;
the embedded servers importing none of the app.
Checked on the tree as it is, and shown to fail on a deliberate violation in a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("haexec", "engine", "coordinator", "db", "common", "embedded")


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable}: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_are_kept() -> None:
    done = lint_imports(ROOT, ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("where", "imports"),
    [
        ("db", "engine.store"),
        ("coordinator", "haexec.cli"),
        ("engine/market", "engine.brokers.base"),
        ("engine/venue", "engine.brokers.paper"),
        ("embedded", "haexec.settings"),
    ],
)
def test_an_import_against_the_layers_breaks_the_contract(tmp_path: Path, where: str, imports: str) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / where / "_probe.py").write_text(f"import {imports}  # a deliberate violation\n")
    done = lint_imports(tmp_path, tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "BROKEN" in done.stdout and f"{where.replace('/', '.')}._probe" in done.stdout
