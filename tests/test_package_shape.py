"""Every package under packages/ has the same shape (docs/writing-a-method.md, "Layout").

Data-driven: a new folder under packages/ is checked as soon as it exists. A package that
declares an `arctic.methods` or `arctic.features` entry point is a plugin package and must also
ship recipes, a plugin module whose entry points resolve, and a docs page.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (REPO / "packages").iterdir() if (p / "pyproject.toml").is_file())
ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())


def project(folder: Path) -> dict[str, Any]:
    return tomllib.loads((folder / "pyproject.toml").read_text())


GROUPS = ("arctic.methods", "arctic.features")


def plugins(folder: Path) -> dict[str, tuple[str, str]]:
    """Entry-point name -> (group, target) in the groups core discovers."""
    entry_points = project(folder)["project"].get("entry-points", {})
    return {name: (group, target) for group in GROUPS for name, target in entry_points.get(group, {}).items()}


def plugin_packages() -> list[Path]:
    return [p for p in PACKAGES if plugins(p)]


def test_packages_are_found():
    assert {p.name for p in PACKAGES} >= {"core", "sft"}
    assert all(p.name != "core" for p in plugin_packages())  # core depends on no method


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: p.name)
def test_every_package_has_the_common_shape(folder):
    name = folder.name
    meta = project(folder)["project"]
    assert meta["name"] == f"arctic-{name}"
    assert "version" not in meta.get("dynamic", []) and Version(meta["version"])
    assert meta.get("readme") == "README.md"
    for required in (
        "README.md",
        "CHANGELOG.md",
        f"src/arctic_{name}/__init__.py",
        f"src/arctic_{name}/py.typed",
    ):
        assert (folder / required).is_file(), f"packages/{name}/{required} is missing"
    assert f"## {meta['version']}" in (folder / "CHANGELOG.md").read_text(), (
        "CHANGELOG has no entry for the version"
    )
    assert any((folder / "tests").glob("test_*.py")), f"packages/{name}/tests/ has no tests"


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: p.name)
def test_every_package_is_wired_into_the_workspace(folder):
    dist, module = f"arctic-{folder.name}", f"arctic_{folder.name}"
    assert ROOT["tool"]["uv"]["sources"].get(dist) == {"workspace": True}
    assert dist in ROOT["dependency-groups"]["dev"], "add it to the root's dev group"
    assert f"packages/{folder.name}/tests" in ROOT["tool"]["pytest"]["ini_options"]["testpaths"]
    assert module in ROOT["tool"]["mypy"]["packages"]
    assert module in ROOT["tool"]["ruff"]["lint"]["isort"]["known-first-party"]


@pytest.mark.parametrize("folder", plugin_packages(), ids=lambda p: p.name)
def test_every_plugin_package_has_recipes_plugin_and_docs(folder):
    name = folder.name
    meta = project(folder)["project"]
    assert any(d.startswith("arctic-core") for d in meta["dependencies"]), (
        "a plugin package depends on arctic-core"
    )
    recipes = folder / "recipes"
    assert any(recipes.glob("*.toml")) or any(recipes.glob("*.yaml")), f"packages/{name}/recipes/ is empty"
    assert (folder / "src" / f"arctic_{name}" / "plugin.py").is_file()
    assert (REPO / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    wheel = project(folder)["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel.get("sources", {}).get("recipes") == f"arctic_{name}/recipes", "the wheel must ship recipes/"


@pytest.mark.parametrize(
    ("folder", "entry", "group", "target"),
    [(p, e, g, t) for p in plugin_packages() for e, (g, t) in plugins(p).items()],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_every_entry_point_names_a_plugin_in_plugin_py(folder, entry, group, target):
    from arctic_core.features import Feature
    from arctic_core.plugins import Method, load_reference

    module, _, attribute = target.partition(":")
    assert module == f"arctic_{folder.name}.plugin", "entry points name objects in the plugin module"
    source = (folder / "src" / f"arctic_{folder.name}" / "plugin.py").read_text()
    assigned = {
        t.id
        for n in ast.parse(source).body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert attribute in assigned, f"{target}: plugin.py defines no {attribute!r}"
    plugin = load_reference(target)
    assert isinstance(plugin, Method if group == "arctic.methods" else Feature) and plugin.name == entry
    references = [getattr(plugin, field, None) for field in ("config", "trainer", "commands", "hooks")]
    for reference in references:
        if reference is not None:
            ref_module = reference.partition(":")[0]
            assert ref_module.startswith(f"arctic_{folder.name}."), f"{reference} is outside the package"
            path = folder / "src" / (ref_module.replace(".", "/") + ".py")
            assert path.is_file(), f"{entry}: {reference} names a missing module"


def test_no_test_switch_is_read_in_package_code():
    """Fault injection and test switches live in the tests (tests/fixtures/arctic-demo/src/sitecustomize.py)."""
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted(REPO.glob("packages/*/src/**/*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "ARCTIC_TEST_" in line
    ]
    assert not found, "test switches read by package code:\n" + "\n".join(found)


# --- import boundaries ----------------------------------------------------------------------------


def imported_modules(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in the file, lazy in-function ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def cross_package_private_imports(path: Path, own: str) -> list[str]:
    """`from arctic_x.m import _name` / `import arctic_x._m` in a file of package `own` (x != own)."""
    problems = []
    for line, module, names in imported_modules(path):
        parts = module.split(".")
        if not parts[0].startswith("arctic_") or parts[0] == own:
            continue
        hidden = [p for p in parts[1:] if private(p)] + [n for n in names if private(n)]
        if hidden:
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            problems.append(f"{where}:{line}: {module} -> {', '.join(hidden)}")
    return problems


def test_no_package_imports_another_packages_private_names(tmp_path):
    problems = [
        problem
        for folder in PACKAGES
        for path in sorted((folder / "src").rglob("*.py"))
        for problem in cross_package_private_imports(path, f"arctic_{folder.name}")
    ]
    assert not problems, "private names used across packages (make them public):\n" + "\n".join(problems)
    planted = tmp_path / "planted.py"  # the check itself finds both spellings, lazy imports too
    planted.write_text("def f():\n    from arctic_core.gather import _hidden\n    import arctic_sft._x\n")
    assert len(cross_package_private_imports(planted, "arctic_embed")) == 2
    assert cross_package_private_imports(planted, "arctic_core") == [f"{planted}:3: arctic_sft._x -> _x"]


CORE = REPO / "packages" / "core" / "src" / "arctic_core"
ENGINE_MODULES = [
    *(
        CORE / "engine" / f"{name}.py"
        for name in ("loop", "state", "setup", "loaders", "checkpoint", "resume")
    ),
    *(CORE / "engine" / f"{name}.py" for name in ("signals", "metrics")),
    *sorted((CORE / "data").rglob("*.py")),
]
TOOLS = ("arctic_core.verify", "arctic_core.plan", "arctic_core.compat", "arctic_core.cli")
"""What the loop, data and checkpoint modules never import: the tools built on top of them."""


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_engine_modules_import_no_tool(path):
    bad = [
        f"line {line}: {module}"
        for line, module, names in imported_modules(path)
        for target in [module, *(f"{module}.{n}" for n in names)]
        if any(target == tool or target.startswith(tool + ".") for tool in TOOLS)
    ]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"
