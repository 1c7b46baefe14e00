"""Imports run one way, read from the source (every import statement, also those inside functions):

- `moshi` never imports `moshi_eval`;
- `moshi_eval.scoring` knows no benchmark: it imports neither a benchmark package nor the modules above them, and no
  string of it (docstrings included) names a benchmark package;
- no module of a benchmark package imports another benchmark package, or the modules above the benchmarks
  (`moshi_eval.compare`, `moshi_eval.training_metrics`), with one exception: the program entry `__main__.py` of a
  benchmark may import the modules above (`python -m moshi_eval.paper_metrics` runs LibriLight too,
  `python -m moshi_eval.librilight compare` draws `moshi_eval.compare`'s figure).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = "scoring"
BENCHMARKS = ("librilight", "paper_metrics")
ABOVE = ("compare", "training_metrics")
PROGRAM_ENTRY = "__main__.py"
NAMES_A_BENCHMARK = re.compile("|".join(BENCHMARKS), re.IGNORECASE)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of the file names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    return modules_imported_by(path.read_text(), package)


def modules_imported_by(source: str, package: str) -> set[str]:
    """Every module an import statement of `source`, a module of `package`, names (relative imports resolved;
    `from a import b` gives `a` and `a.b`, since `b` may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def files_of(package: str) -> list[Path]:
    return sorted((REPO / package.replace(".", "/")).rglob("*.py"))


def test_the_packages_are_the_ones_these_rules_know():
    root = REPO / "moshi_eval"
    packages = {path.name for path in root.iterdir() if (path / "__init__.py").is_file()}
    modules = {path.stem for path in root.glob("*.py") if path.name != "__init__.py"}
    assert packages | modules == {SHARED, *BENCHMARKS, *ABOVE}


def test_moshi_never_imports_moshi_eval():
    offending = {str(path.relative_to(REPO)): sorted(module for module in imported_modules(path)
                                                     if within(module, "moshi_eval"))
                 for path in files_of("moshi")}
    assert {path: modules for path, modules in offending.items() if modules} == {}


@pytest.mark.parametrize("path", files_of("moshi_eval.scoring"), ids=lambda path: path.name)
def test_scoring_knows_no_benchmark(path):
    above = [f"moshi_eval.{name}" for name in (*BENCHMARKS, *ABOVE)]
    assert sorted(module for module in imported_modules(path) if any(within(module, other) for other in above)) == []
    strings = [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
               and isinstance(node.value, str)]
    assert [text for text in strings if NAMES_A_BENCHMARK.search(text)] == []


@pytest.mark.parametrize("path", [path for name in BENCHMARKS for path in files_of(f"moshi_eval.{name}")],
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_a_benchmark_imports_no_other_and_nothing_above_it(path):
    own = module_name(path).split(".")[1]
    forbidden = [f"moshi_eval.{name}" for name in BENCHMARKS if name != own]
    if path.name != PROGRAM_ENTRY:
        forbidden += [f"moshi_eval.{name}" for name in ABOVE]
    assert sorted(module for module in imported_modules(path)
                  if any(within(module, other) for other in forbidden)) == []


def test_the_import_reader_sees_every_kind_of_import():
    """Relative imports, imports inside functions and `from package import module` are all read."""
    source = "def late():\n    from ..librilight import evaluate\n    import moshi_eval.compare.cli\n"
    found = modules_imported_by(source, "moshi_eval.paper_metrics")
    assert {"moshi_eval.librilight", "moshi_eval.librilight.evaluate", "moshi_eval.compare.cli"} <= found
    assert modules_imported_by("from .. import scoring\n", "moshi_eval.librilight") >= {"moshi_eval.scoring"}
