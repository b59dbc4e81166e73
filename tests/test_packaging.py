"""What `pip install` ships: every directory of the package is declared (so a wheel holds the
code, templates and catalogs, and setuptools prints no warning), and the version is written
once."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import digest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def shipped_directories() -> set[str]:
    found = set()
    for top, name in (
        ("digest", "digest"),
        ("subscribers", "subscribers"),
        ("templates", "digest.templates"),
    ):
        base = ROOT / top
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and path.name != "__pycache__" and any(path.iterdir()):
                relative = path.relative_to(base).parts
                found.add(".".join((name, *relative)))
    return found


def test_every_shipped_directory_is_a_declared_package() -> None:
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = sorted(shipped_directories() - declared)
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_the_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "digest.__version__"}
    assert digest.__version__


def test_every_imported_third_party_package_is_declared() -> None:
    declared = {
        Requirement(r).name.lower().replace("-", "_") for r in PYPROJECT["project"]["dependencies"]
    }
    # import name -> distribution name, where they differ
    names = {"dkim": "dkimpy", "dns": "dnspython", "markdown_it": "markdown_it_py"}
    imported = set()
    for path in [
        ROOT / "digest_cli.py",
        *(ROOT / "digest").rglob("*.py"),
        *(ROOT / "subscribers").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = {
        names.get(m, m).lower()
        for m in imported
        if m not in sys.stdlib_module_names
        and m not in ("digest", "subscribers", "digest_cli", "__future__")
    }
    assert sorted(third_party - declared) == []
