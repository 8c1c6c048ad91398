"""The layer rule of docs/architecture.md, checked by import-linter (pyproject.toml's [tool.importlinter])."""
import ast
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


def deferred_imports_without_a_reason(root: Path) -> list[str]:
    """Imports inside functions in tl_core whose block (the import and the imports and blank lines right above it) has no
    comment: an import is deferred only to keep a heavy or optional dependency off a path that does not need it, and
    says which."""

    unexplained = []
    for path in sorted((root / "tl_core").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    row = inner.lineno - 1
                    while "#" not in lines[row] and row > 0 and (lines[row - 1].strip().startswith(("import ", "from ", "#"))
                                                                 or not lines[row - 1].strip()):
                        row -= 1
                    if "#" not in lines[row]:
                        unexplained.append(f"{path.relative_to(root)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    return unexplained


def test_every_import_inside_a_function_says_why_it_is_deferred(tmp_path):
    assert deferred_imports_without_a_reason(REPO) == []
    shutil.copytree(REPO / "tl_core", tmp_path / "tl_core", ignore=shutil.ignore_patterns("__pycache__"))
    head = tmp_path / "tl_core" / "model" / "head.py"
    head.write_text(head.read_text() + "\n\ndef late():\n    import json\n    return json\n")
    assert deferred_imports_without_a_reason(tmp_path) == [f"tl_core/model/head.py:{len(head.read_text().splitlines()) - 1}: "
                                                           "import json"]
