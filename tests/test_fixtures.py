"""The repository proves its claims on its own: tests, benchmarks and CI read nothing outside it, and the fixtures they
read are documented and small."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SIZE_BUDGET = 10_000_000  # bytes, every fixture together

SOURCES = sorted({*REPO.glob("tests/**/*.py"), *REPO.glob("tests/**/*.sh"), *REPO.glob("bench/**/*.py"),
                  *REPO.glob("bench/**/*.sh"), REPO / ".ci" / "run"} - {Path(__file__).resolve()})
OUTSIDE_NAMES = re.compile(r"""shared/parity|\.\./shared|["']shared["']|/work/""")
ROOT_PARENT = re.compile(r"\b(?:REPO_ROOT|REPO|ROOT)\.parent\b")
PARENTS_INDEX = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]((?:\.parent\b)*)")
PARENT_CHAIN = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent\b)+)")


def levels_above_the_root(path: Path, root: Path, text: str) -> list[int]:
    """For each `Path(__file__)` climb in `text`, how far above `root` it lands (<= 0: inside)."""
    climbs_to_root = len(path.relative_to(root).parts)  # `.parent` steps from the file's path to the root
    climbs = [int(index) + 1 + parents.count(".parent") for index, parents in PARENTS_INDEX.findall(text)]
    climbs += [chain.count(".parent") for chain in PARENT_CHAIN.findall(text)]
    return [climb - climbs_to_root for climb in climbs]


def outside_references(path: Path, root: Path = REPO) -> list[str]:
    text = path.read_text()
    found = [match.group(0) for match in OUTSIDE_NAMES.finditer(text)]
    found += [match.group(0) for match in ROOT_PARENT.finditer(text)]
    found += [f"Path(__file__) climbs {above} level(s) above the repository" for above in
              levels_above_the_root(path, root, text) if above > 0]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_no_source_reads_outside_the_repository(path):
    assert outside_references(path) == [], f"{path.relative_to(REPO)} refers to a path outside the repository"


def test_the_outside_check_catches_the_old_forms(tmp_path):
    """What the old tests did: `../shared/parity` beside the repository, through a parent of the root or `parents`."""
    source = tmp_path / "tests" / "models" / "test_x.py"
    source.parent.mkdir(parents=True)
    for line in ('PARITY = REPO_ROOT.parent / "shared" / "parity"', 'X = Path(__file__).resolve().parents[3]',
                 'X = Path(__file__).parent.parent.parent.parent', 'X = Path("../shared/parity")'):
        source.write_text(line + "\n")
        assert outside_references(source, tmp_path), line
    source.write_text('X = Path(__file__).resolve().parents[2] / "tests" / "fixtures"\n')
    assert outside_references(source, tmp_path) == []


def test_every_fixture_folder_is_documented():
    """Each folder under tests/fixtures is listed in its README (with source and command) or carries its own."""
    readme = (FIXTURES / "README.md").read_text()
    folders = [path for path in FIXTURES.iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert folders
    undocumented = [folder.name for folder in folders
                    if f"`{folder.name}/`" not in readme and not (folder / "README.md").is_file()]
    assert undocumented == []
    user_readme = (FIXTURES / "user_ttt" / "README.md").read_text()
    cases = [path.name for path in (FIXTURES / "user_ttt").iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert cases and all(f"`{case}`" in user_readme for case in cases)


def test_fixtures_fit_the_size_budget():
    total = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    assert 0 < total <= SIZE_BUDGET, f"tests/fixtures holds {total / 1e6:.1f} MB, over {SIZE_BUDGET / 1e6:.0f} MB"
