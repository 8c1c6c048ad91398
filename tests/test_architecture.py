"""The layer rule of docs/architecture.md, checked by import-linter (pyproject.toml's [tool.importlinter])."""
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the tl_core under root, with root's pyproject.toml."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_tl_core_keeps_its_layers():
    result = lint_imports(REPO)
    assert result.returncode == 0 and "Contracts: 1 kept, 0 broken." in result.stdout, result.stdout + result.stderr


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "tl_core", tmp_path / "tl_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "tl_core" / "model" / "head.py").write_text(
        (REPO / "tl_core" / "model" / "head.py").read_text() + "\nfrom tl_core.training.models import Models  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "tl_core.model is not allowed to import tl_core.training" in result.stdout, result.stdout
    assert "tl_core.model.head -> tl_core.training.models" in result.stdout, result.stdout
