"""The manual (README.md, docs/) says what the code does: its figures come from the results files, its commands run."""
import importlib
import re
import shlex
import shutil
import json
from pathlib import Path

import pytest

from benchmarks import report
from conftest import REPO, manual_pages

SHELL_FENCES = {"bash", "sh", "shell", "console", "cron"}
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
JOBS = sorted(path.stem for path in (REPO / "jobs").glob("*.py") if path.stem not in ("__init__", "cli"))


def jobs_invocations(line: str) -> list[tuple[str, list[str]]]:
    """Each `python -m jobs.<name> args...` on one shell line, as (name, args); args end at a shell operator."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and i > 0 and re.search(r"python[\d.]*$", tokens[i - 1]) and tokens[i + 1].startswith("jobs."):
            args = []
            for arg in tokens[i + 2:]:
                if set(arg) <= set("();<>|&"):
                    break
                args.append(arg)
            found.append((tokens[i + 1].removeprefix("jobs."), args))
    return found


def documented_commands(text: str) -> list[tuple[str, list[str], str]]:
    """(name, args, as written) of every jobs command in the fenced shell blocks and the inline code of a page."""
    commands = []
    for language, body in FENCE.findall(text):
        if language not in SHELL_FENCES:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if language == "console":  # only the prompt's lines are commands; the rest is their output
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            commands += [(name, args, line) for name, args in jobs_invocations(line)]
    for span in re.findall(r"`([^`\n]*python -m jobs\.[^`\n]*)`", FENCE.sub("", text)):
        commands += [(name, args, span) for name, args in jobs_invocations(span)]
    return commands


def unknown_commands(text: str) -> list[str]:
    """The documented commands whose module or flags the code does not have, each with argparse's reason."""
    wrong = []
    for name, args, written in documented_commands(text):
        if name not in JOBS:
            wrong.append(f"{written}: there is no jobs.{name} (commands: {', '.join(JOBS)})")
            continue
        try:
            importlib.import_module(f"jobs.{name}").parse_args(args)
        except SystemExit as stop:
            if stop.code:
                wrong.append(f"{written}: jobs.{name} refuses these arguments")
    return wrong


def test_every_command_in_the_manual_exists_with_its_flags(capsys):
    problems, seen = [], set()
    for page in manual_pages():
        text = page.read_text()
        seen |= {name for name, _, _ in documented_commands(text)}
        problems += [f"{page.relative_to(REPO)}: {problem}" for problem in unknown_commands(text)]
    assert not problems, "\n".join(problems) + "\n" + capsys.readouterr().err
    assert seen == set(JOBS)  # the listing finds commands at all, and every command is documented


def test_the_command_listing_catches_a_removed_command_or_flag(capsys):
    page = """
```bash
.venv/bin/python -m jobs.train --epochs 3 --no-such-flag   # a comment
ray job submit --working-dir . \\
  -- python -m jobs.gone --data-dir D
```
and inline `python -m jobs.predict --model M --input I --output O --colour blue`; fine: `python -m jobs.assets`.
"""
    assert [name for name, _, _ in documented_commands(page)] == ["train", "gone", "predict", "assets"]
    wrong = unknown_commands(page)
    assert len(wrong) == 3 and "--no-such-flag" in wrong[0] and "no jobs.gone" in wrong[1] and "--colour" in wrong[2]


def test_shell_operators_end_a_command_and_output_is_not_a_command():
    page = """
```console
$ python -m jobs.train --epochs 2 > run.log
epoch 1/2 python -m jobs.nothing
```

```cron
30 2 * * * RAY_AUTH_TOKEN=$(cat t) ray job submit --submission-id "r-$(date +\\%Y)" -- python -m jobs.retrain --registry R >> l 2>&1
```
"""
    assert [(name, args) for name, args, _ in documented_commands(page)] == [
        ("train", ["--epochs", "2"]), ("retrain", ["--registry", "R"])]


def test_every_table_of_figures_matches_its_results_file():
    assert report.update(REPO, write=False) == []
    names = {match["name"] for page in manual_pages() for match in report.BLOCK.finditer(page.read_text())}
    assert names == set(report.TABLES)  # every table is shown somewhere


@pytest.fixture
def manual_copy(tmp_path) -> Path:
    for page in manual_pages():
        (tmp_path / page.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, tmp_path / page.relative_to(REPO))
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def test_a_results_file_changed_without_its_tables_fails_the_check(manual_copy, capsys):
    results_file = manual_copy / "benchmarks" / "results" / "accuracy.json"
    results = json.loads(results_file.read_text())
    results["results"]["sample"]["default"]["accuracy"] = 0.5
    results_file.write_text(json.dumps(results))
    assert report.main(["--check", "--root", str(manual_copy)]) == 1
    err = capsys.readouterr().err
    assert "README.md: headline" in err and "docs/recipes.md: accuracy" in err and "tune" not in err
    assert report.main(["--root", str(manual_copy)]) == 0  # rewrites the blocks in place
    assert "| **0.500** |" in (manual_copy / "README.md").read_text()
    assert report.main(["--check", "--root", str(manual_copy)]) == 0


def test_a_table_edited_by_hand_fails_the_check(manual_copy, capsys):
    page = manual_copy / "docs" / "performance.md"
    page.write_text(page.read_text().replace("| backbone alone, forward (the ceiling) | 198 img/s |",
                                             "| backbone alone, forward (the ceiling) | 250 img/s |"))
    assert report.main(["--check", "--root", str(manual_copy)]) == 1
    assert "docs/performance.md: cpu" in capsys.readouterr().err


def test_the_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    command = readme.split("Set up and run the tests")[1].split("```bash\n")[1].split("\n```")[0]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [command]


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 200
    headings = [line for line in lines if line.startswith("## ")]
    first_screens = "\n".join(lines[:120])
    for heading in ("## Two commands", "## Train on your own folders", "## What a run writes", "## Serve the model"):
        assert heading in first_screens, heading
    assert headings.index("## Two commands (fresh clone, Python 3.11)") == 0


def test_the_manual_speaks_to_users_not_of_this_project_s_issues():
    for page in manual_pages():
        assert not re.search(r"\bissues? \d+|closing note", page.read_text(), re.IGNORECASE), page


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_pages_resolves():
    broken = []
    for page in manual_pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                anchors = {slug(line.lstrip("#")) for line in linked.read_text().splitlines() if line.startswith("#")}
                if anchor not in anchors:
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
