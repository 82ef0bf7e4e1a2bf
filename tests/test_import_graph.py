"""The import graph's contracts (.importlinter), checked by import-linter's own command, and
proof that the check can fail: a contract the code breaks, and a cycle made only of imports under
`if TYPE_CHECKING:` and inside a function, are both reported. No services needed."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(config: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # --no-cache: nothing written into the checkout, and no stale graph from an earlier run.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def contract_names(config: Path) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(config)
    return [parser[section]["name"] for section in parser.sections()
            if section.startswith("importlinter:contract:")]


def test_the_project_keeps_every_contract() -> None:
    result = lint_imports(CONTRACTS)
    assert result.returncode == 0, result.stdout + result.stderr
    names = contract_names(CONTRACTS)
    assert names, "no contracts in .importlinter"
    for name in names:
        assert f"{name} KEPT" in " ".join(result.stdout.split()), (name, result.stdout)
    assert f"Contracts: {len(names)} kept, 0 broken." in result.stdout


def test_the_contracts_cover_the_packages_the_issue_names() -> None:
    parser = configparser.ConfigParser()
    parser.read(CONTRACTS)
    roots = set(parser["importlinter"]["root_packages"].split())
    assert {"localfaas", "taskcore", "worker_fleet", "taskfaas", "functions"} <= roots
    acyclic = [parser[s] for s in parser.sections() if parser[s].get("type") == "acyclic_siblings"]
    assert {"localfaas", "taskcore"} <= {a for c in acyclic for a in c["ancestors"].split()}


def test_a_contract_the_code_breaks_fails_the_check(tmp_path: Path) -> None:
    # taskfaas's client signs its requests with taskcore.signing: taskcore above it is a lie.
    config = tmp_path / "broken.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    taskcore\n    taskfaas\n\n"
        "[importlinter:contract:upside-down]\nname = taskcore above taskfaas\ntype = layers\n"
        "layers =\n    taskcore\n    taskfaas\n"
    )
    result = lint_imports(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "taskcore above taskfaas BROKEN" in result.stdout
    assert "taskfaas." in result.stdout and "-> taskcore." in result.stdout


def test_a_cycle_through_type_checking_and_function_level_imports_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "left.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from circle import right\n")
    (package / "right.py").write_text("def late():\n    from circle import left\n    return left\n")
    (package / "apart.py").write_text("import json\n")
    config = tmp_path / "acyclic.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    circle\n\n"
        "[importlinter:contract:acyclic]\nname = no cycles in circle\ntype = acyclic_siblings\n"
        "ancestors =\n    circle\n"
    )
    result = lint_imports(config, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no cycles in circle BROKEN" in result.stdout
    assert ".left -> .right" in result.stdout or ".right -> .left" in result.stdout
