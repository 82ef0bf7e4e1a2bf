"""The documents hold: everything the code and a reader rely on is inside the repository, every
`docs/<file>` and `docs/<file> §N` citation resolves, and the defaults and the package index that
the documents state are the code's. Pure file reading (plus one interpreter to check imports)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker_fleet.__main__ import parser as fleet_parser

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
# Not the project's own text: environments, caches, run directories, build output.
SKIPPED_DIRS = {".git", ".venv", ".localfaas", ".pytest_cache", ".ruff_cache", "__pycache__", "build",
                "node_modules"}
SKIPPED_PATHS = {ROOT / "bench" / "reports"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".env", ".txt", ".cfg", ".ini", ".json"}

# Documents that lived outside the repository (../shared) and the citations of them.
OUTSIDE = re.compile(r"\.\./shared|DESIGN\.md|DESIGN\s*§|LAMBDA_REFERENCE")
# A docs/ path of this repository (not one inside another path or URL, such as awsdocs/... or
# .../docs/globals.rst of another project), optionally followed by section references:
# "docs/architecture.md §5", "`docs/architecture.md` §3-§5, §7", "docs/lambda_behaviours.md §2.5 and §3".
SECTION = r"§\s*\d+(?:\.\d+)*"
CITATION = re.compile(
    r"(?<![\w/.-])docs/(?P<file>(?:[\w-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:md|ya?ml|json))`?"
    rf"(?P<refs>[ \t]*{SECTION}(?:\s*(?:,|-|\u2013|and)\s*(?:{SECTION}|\d+(?:\.\d+)*(?![\w.])))*)?"
)


def project_files() -> Iterator[Path]:
    """The repository's text files (tracked or not yet), without the environment and caches."""
    for directory, dirs, files in os.walk(ROOT):
        here = Path(directory)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")
                         and here / d not in SKIPPED_PATHS)
        for name in sorted(files):
            path = here / name
            if path.suffix in TEXT_SUFFIXES or name == "Makefile" or _is_script(path):
                yield path


def _is_script(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(2) == b"#!"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def section_numbers(refs: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)*", refs or "")


def has_section(document: str, number: str) -> bool:
    """A heading numbered `number`: "## 5. Amazon MQ ..." or "### 5.1 Event"."""
    return re.search(rf"^#+[ \t]+{re.escape(number)}\.?[ \t]", document, re.MULTILINE) is not None


def broken_citations(text: str) -> list[str]:
    """What in `text` cites a docs/ file that does not exist, or a section its file does not have."""
    problems = []
    for match in CITATION.finditer(text):
        target = ROOT / "docs" / match["file"]
        if not target.is_file():
            problems.append(f"{match[0].strip()}: no such file")
            continue
        document = read(target)
        problems += [f"{match[0].strip()}: {match['file']} has no section {number}"
                     for number in section_numbers(match["refs"]) if not has_section(document, number)]
    return problems


def test_nothing_refers_to_documents_outside_the_repository() -> None:
    files = list(project_files())
    assert ROOT / "Makefile" in files and ROOT / "infra" / "run.sh" in files and ROOT / "README.md" in files
    # This file names what it looks for, so it is the one file not searched.
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in files if path != THIS
                 for number, line in enumerate(read(path).splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, "cite docs/ instead:\n" + "\n".join(offenders)


def test_every_docs_citation_resolves_to_a_file_and_a_section() -> None:
    problems, cited_sections = [], 0
    # This file holds broken citations on purpose (the cases below), so it is not searched.
    for path in (path for path in project_files() if path != THIS):
        text = read(path)
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in broken_citations(text)]
        cited_sections += sum(len(section_numbers(m["refs"])) for m in CITATION.finditer(text))
    assert not problems, "\n".join(problems)
    # The search finds the citations that are known to be there, so passing is not vacuous.
    assert cited_sections >= 10
    assert "docs/architecture.md §5" in read(ROOT / "taskcore" / "store.py")


@pytest.mark.parametrize("text, problem", [
    ("see docs/architecture.md §99", "has no section 99"),
    ("(`docs/architecture.md` §3-§42, §7)", "has no section 42"),
    ("docs/lambda_behaviours.md §5.9", "has no section 5.9"),
    ("docs/lambda_behaviours.md §2.5 and §8", "has no section 8"),
    ("details in docs/no_such_file.md", "no such file"),
    ("an event in docs/examples/no_such_event.json", "no such file"),
])
def test_a_broken_citation_is_reported(text: str, problem: str) -> None:
    assert any(problem in p for p in broken_citations(text)), broken_citations(text)


def test_sound_citations_and_other_projects_paths_are_not_reported() -> None:
    assert broken_citations("docs/architecture.md §1, §4, §5; docs/worker_fleet.md; "
                            "`docs/architecture.md` §3-§5, §7; docs/lambda_behaviours.md §2.5 and §3") == []
    assert broken_citations("aws/serverless-application-model: docs/globals.rst, "
                            "awsdocs/aws-lambda-developer-guide: doc_source/x.md, "
                            "https://github.com/org/repo/docs/missing.md") == []


def test_fleet_defaults_in_the_docs_are_the_code_defaults() -> None:
    defaults = fleet_parser().parse_args([])
    stated = re.search(r"Defaults: (\d+) workers, concurrency (\d+), grace (\d+(?:\.\d+)?) s",
                       read(ROOT / "docs" / "worker_fleet.md"))
    assert stated, "docs/worker_fleet.md no longer states the defaults as 'Defaults: N workers, ...'"
    assert (int(stated[1]), int(stated[2]), float(stated[3])) == (
        defaults.workers, defaults.concurrency, defaults.grace)
    readme = read(ROOT / "README.md")
    starts = re.search(r"`make run` starts (\d+) workers that each run (\d+) tasks at once", readme)
    assert starts, "the README no longer says what `make run` starts"
    assert (int(starts[1]), int(starts[2])) == (defaults.workers, defaults.concurrency)
    # make run starts the fleet with these defaults: run.sh passes numbers only when told to.
    run_sh = read(ROOT / "infra" / "run.sh")
    assert "python -m worker_fleet" in run_sh
    assert not re.search(r"\$\{(?:WORKERS|CONCURRENCY):-[^}]", run_sh)


def _package_index() -> tuple[str, set[str]]:
    import taskcore

    doc = taskcore.__doc__ or ""
    return doc, set(re.findall(r"^    (\w+)\s{2,}\S", doc, re.MULTILINE))


def test_taskcore_index_lists_every_module() -> None:
    _doc, listed = _package_index()
    modules = {path.stem for path in (ROOT / "taskcore").glob("*.py") if path.stem != "__init__"}
    packages = {path.parent.name for path in (ROOT / "taskcore").glob("*/__init__.py")}
    assert listed == modules | packages


def _taskcore_modules() -> dict[str, Path]:
    """Every module of taskcore by its dotted name inside it: "store", "rabbitmq", "rabbitmq.amqp"."""
    modules = {}
    for path in (ROOT / "taskcore").rglob("*.py"):
        parts = path.relative_to(ROOT / "taskcore").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            modules[name] = path
    return modules


def test_taskcore_index_says_truly_which_module_imports_which_package() -> None:
    doc, _listed = _package_index()
    text = " ".join(doc.split())
    claims = re.search(r"use them: (?P<uses>.+?)\. (?P<plain>[\w, ]+?) need only the standard library", text)
    assert claims, "the index no longer says where third-party packages are imported"
    stated: dict[str, set[str]] = {}
    for clause in claims["uses"].split("; "):
        package, _by, modules = clause.partition(" by ")
        stated[package] = set(re.split(r", | and ", modules))
    actual: dict[str, set[str]] = {package: set() for package in stated}
    for module, path in _taskcore_modules().items():
        for node in ast.walk(ast.parse(read(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                assert top in stated or top == "taskcore" or top in sys.stdlib_module_names, (
                    f"taskcore/{path.name} imports {top}, which the index does not mention")
                if top in stated:
                    actual[top].add(module)
    assert stated == actual
    # And the plain modules really load no third-party package, in a fresh interpreter.
    plain = sorted(set(re.split(r", | and ", claims["plain"])))
    probe = (f"import sys\nimport {', '.join('taskcore.' + m for m in plain)}\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(stated)!r})))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    assert loaded.stdout.strip() == "[]"
