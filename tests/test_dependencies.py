"""Dependencies point one way: common/ ← the stages ← pipeline/.

common/ imports no other package of the project; a stage (components/preprocess, components/batch_predict,
components/evaluate + evaluation_report, components/push, trainer/, serving/) imports common/ and
itself; only pipeline/ (the commands, the KFP shells and the pipelines) imports the stages. Two views,
both asserted: every import statement of every module, function-level (lazy) ones included, read
from its source; and what importing each package actually loads, in a fresh interpreter.

EXCEPTIONS lists the imports across stages that exist today, each with its reason. A new one fails
this test: share through common/ instead, or add it here with the reason.
"""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("common", "components", "pipeline", "serving", "trainer")
STAGES = (
    "components.batch_predict", "components.evaluate", "components.preprocess", "components.push", "serving", "trainer",
)

# (importing unit, imported module) → why it is allowed.
EXCEPTIONS = {
    ("components.batch_predict", "components.preprocess.catalog"):
        "one catalog reader: batch prediction reads a catalog exactly as preprocess does (docs/batch-prediction.md)",
    ("components.batch_predict", "components.preprocess.row_checks"):
        "one definition of a usable row: the same checks and quarantine reasons as preprocess",
    ("components.batch_predict", "components.preprocess.catalog_rows"):
        "the same Beam steps from catalog files to one checked row per id, with the same rejects",
    ("components.batch_predict", "components.push"):
        "newest_served_model: a model base resolves to the version push published and TF Serving serves",
}


def unit(module: str) -> str:
    """The package a module belongs to, for this graph: a stage, common, pipeline."""
    parts = module.split(".")
    if parts[0] == "components" and len(parts) > 1:
        name = "evaluate" if parts[1] == "evaluation_report" else parts[1]
        return f"components.{name}"
    return parts[0]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: pathlib.Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function; `from package import module`
    counts as the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if is_module(child) else node.module)
    return {name for name in found if name.split(".")[0] in PROJECT}


def project_modules() -> list[pathlib.Path]:
    return sorted(p for top in PROJECT for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts)


def allowed(importer: str, imported: str) -> bool:
    source, target = unit(importer), unit(imported)
    if source == target or target == "common" or source == "pipeline":
        return True
    return any(source == u and (imported == m or imported.startswith(m + ".")) for u, m in EXCEPTIONS)


def test_every_import_statement_lazy_ones_included_follows_the_graph():
    wrong = [
        f"{module_name(path)} imports {imported}"
        for path in project_modules()
        for imported in sorted(imports_of(path))
        if not allowed(module_name(path), imported)
    ]
    assert wrong == []


def test_common_imports_nothing_of_the_project():
    for path in (REPO / "common").rglob("*.py"):
        assert {unit(m) for m in imports_of(path)} <= {"common"}, path


def test_the_check_catches_a_stage_importing_another():
    assert not allowed("trainer.export", "components.evaluate")
    assert not allowed("serving.server", "pipeline.cli")
    assert not allowed("components.batch_predict.job", "components.preprocess.job")
    assert allowed("components.batch_predict.job", "components.preprocess.row_checks")


def test_every_exception_is_still_needed():
    """An exception nothing needs any more is removed from the list, so the graph stays as strict as it is."""
    used = {
        (u, m)
        for path in project_modules()
        for imported in imports_of(path)
        for u, m in EXCEPTIONS
        if unit(module_name(path)) == u and (imported == m or imported.startswith(m + "."))
    }
    assert set(EXCEPTIONS) - used == set()


_LOADED = """
import importlib, json, pkgutil, sys
root = sys.argv[1]
names = [root]
package = importlib.import_module(root)
if hasattr(package, "__path__"):
    names += [f"{root}.{m.name}" for m in pkgutil.walk_packages(package.__path__) if m.name != "__main__"]
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {projects})))
"""


def loaded_by_importing(package: str, home: pathlib.Path) -> set[str]:
    """The project's modules in sys.modules after importing `package` and all its modules, fresh."""
    script = _LOADED.replace("{projects}", repr(set(PROJECT)))
    result = subprocess.run([sys.executable, "-c", script, package], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
                                              "TF_USE_LEGACY_KERAS": "1", "HOME": str(home)})
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


# The modules of each unit to import (a unit is a package, or a module for evaluate and push).
UNIT_MODULES = {"components.evaluate": ("components.evaluate", "components.evaluation_report")}


@pytest.mark.parametrize("package", ("common", *STAGES))
def test_importing_a_package_loads_only_what_the_graph_allows(package, tmp_path):
    loaded = set().union(*(loaded_by_importing(m, tmp_path) for m in UNIT_MODULES.get(package, (package,))))
    # "components" itself is a namespace of stages, loaded with any of them.
    foreign = {m for m in loaded if unit(m) not in (package, "common") and m != "components"}
    # Each must come with an allowed import: the allowed module itself or one it imports in turn.
    roots = [m for u, m in EXCEPTIONS if u == package]
    assert {m for m in foreign if not any(_reachable_from(root, m) for root in roots)} == set()


def _reachable_from(start: str, target: str) -> bool:
    """Whether module `start` imports `target`, directly or through other project modules (top-level and lazy)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == target or name.startswith(target + "."):  # importing a module loads its packages
            return True
        if name in seen:
            continue
        seen.add(name)
        path = REPO.joinpath(*name.split("."))
        files = [path.with_suffix(".py")] if path.with_suffix(".py").exists() else list(path.glob("*.py"))
        for file in files:
            todo.extend(imports_of(file))
    return False
