"""bench/ is a leaf: .importlinter's bench-is-a-leaf contract (kept by the project: see
tests/test_import_graph.py) catches an import of bench from anywhere but bench's own tests, even
one inside a function, although bench is outside the graph (a namespace package of scripts)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACT = "importlinter:contract:bench-is-a-leaf"


def test_an_import_of_bench_outside_its_tests_breaks_the_contract(tmp_path: Path) -> None:
    project = configparser.ConfigParser()
    project.read(ROOT / ".importlinter")
    leaf = project[CONTRACT]
    assert leaf["type"] == "forbidden" and leaf["forbidden_modules"].split() == ["bench"]
    assert "tests" in leaf["source_modules"].split()

    # A tests package of its own: bench's tests may import it, an e2e test may not.
    for folder in ("tests", "tests/bench", "tests/e2e"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "tests/bench/test_driver.py").write_text("from bench import driver\n")
    (tmp_path / "tests/e2e/test_pipeline.py").write_text(
        "def start():\n    from bench.stack import start_stack\n    return start_stack\n")
    config = tmp_path / "leaf.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    tests\ninclude_external_packages = True\n\n"
        f"[{CONTRACT}]\nname = {leaf['name']}\ntype = forbidden\nsource_modules =\n    tests\n"
        "forbidden_modules =\n    bench\nignore_imports =\n"
        + "".join(f"    {line}\n" for line in leaf["ignore_imports"].splitlines() if line.strip()))

    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{leaf['name']} BROKEN" in " ".join(result.stdout.split())
    assert "tests.e2e.test_pipeline -> bench" in result.stdout
    assert "tests.bench" not in result.stdout.split("Broken contracts")[1]  # bench's own tests may

    (tmp_path / "tests/e2e/test_pipeline.py").write_text("from taskfaas.stack import start_stack\n")
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
