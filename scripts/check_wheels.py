"""Check that each package's wheel builds, declares what it imports, ships its recipes, and works alone.

    uv run --no-sync python scripts/check_wheels.py [--install] [PACKAGE ...]

PACKAGE is a folder name under packages/ (`core`, `sft`) or the path of a package folder;
default: every package under packages/. For each one:

1. `uv build` its wheel.
2. Every module its .py files import (at any depth, `if TYPE_CHECKING:` blocks aside; relative
   imports, the package itself and the standard library skipped) must come from a distribution
   its METADATA declares: in `Requires-Dist`, or in the extra that names the module's
   distribution when the import is optional. Modules are mapped to distributions with this
   environment's `importlib.metadata.packages_distributions()` plus a few explicit names.
3. If the source folder has `recipes/`, the wheel has every file of it under `<module>/recipes/`.

With `--install`, each package is then installed from its wheel (with arctic-core's wheel and the
third-party versions pinned in uv.lock) into a fresh virtual environment, and from an empty folder,
offline: `arctic plugins` must list its methods (arctic-core alone: none), and its bundled
`quickstart.toml`, if it has one, must train to the end and write its metrics.

Exit status 0 when every check passes, 1 otherwise; each problem is printed as one line naming
the package, and for imports the file:line and module. Standard library plus `packaging` only.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]

# Import names whose distribution this environment cannot tell (not installed, or installed
# without a RECORD of its modules).
KNOWN = {
    "attr": "attrs",
    "flash_attn": "flash-attn",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
}

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "UV_OFFLINE": "1"}


def uv() -> str:
    """uv: the one running this script (`uv run` sets $UV), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if found is None:
        raise SystemExit("check_wheels: uv not found (run me with `uv run --no-sync python ...`)")
    return found


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


# --- reading a wheel -------------------------------------------------------------------------


class Wheel:
    """A built wheel's files, name, declared requirements and top-level modules."""

    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as archive:
            self.files = {name: archive.read(name) for name in archive.namelist()}
        (metadata_name,) = [n for n in self.files if n.endswith(".dist-info/METADATA")]
        self.metadata = Parser().parsestr(self.files[metadata_name].decode())
        self.name = canonicalize_name(self.metadata["Name"])
        self.extras = self.metadata.get_all("Provides-Extra") or []
        tops = {n.split("/")[0] for n in self.files}
        self.top_level = {t.removesuffix(".py") for t in tops if not t.endswith((".dist-info", ".data"))}

    def requirements(self) -> dict[str, set[str]]:
        """Declared distributions -> the extras that declare them ("" for the base dependencies)."""
        declared: dict[str, set[str]] = {}
        environment = {k: str(v) for k, v in default_environment().items()}
        for line in self.metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            marker = requirement.marker
            extras = {
                e for e in self.extras if marker is not None and marker.evaluate({**environment, "extra": e})
            }
            if marker is None or marker.evaluate({**environment, "extra": ""}) or not extras:
                extras = {""}  # a base dependency (or one for another platform)
            declared.setdefault(canonicalize_name(requirement.name), set()).update(extras)
        return declared


# --- imports -----------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(top-level module, line) of every absolute import, skipping `if TYPE_CHECKING:` bodies."""
    if isinstance(tree, ast.If) and _is_type_checking(tree.test):
        for node in tree.orelse:
            yield from imports(node)
        return
    if isinstance(tree, ast.Import):
        for alias in tree.names:
            yield alias.name.split(".")[0], tree.lineno
    elif isinstance(tree, ast.ImportFrom) and tree.level == 0 and tree.module:
        yield tree.module.split(".")[0], tree.lineno
    for child in ast.iter_child_nodes(tree):
        yield from imports(child)


def distributions_of(module: str, mapping: dict[str, list[str]]) -> set[str]:
    found = {canonicalize_name(d) for d in mapping.get(module, [])}
    if module in KNOWN:
        found.add(canonicalize_name(KNOWN[module]))
    found.add(canonicalize_name(module))  # arctic_core -> arctic-core, tomli_w -> tomli-w
    return found


def check_imports(wheel: Wheel, mapping: dict[str, list[str]], not_imported: list[str]) -> list[str]:
    """Undeclared imports, and declared distributions nothing imports (unless listed as such)."""
    declared = wheel.requirements()
    problems, used = [], set()
    for name, content in sorted(wheel.files.items()):
        if not name.endswith(".py"):
            continue
        for module, line in imports(ast.parse(content, filename=name)):
            if module in sys.stdlib_module_names or module in wheel.top_level or module == "__future__":
                continue
            candidates = distributions_of(module, mapping)
            used |= candidates
            if candidates & declared.keys():
                continue
            known = sorted(canonicalize_name(d) for d in mapping.get(module, [KNOWN.get(module, "")]) if d)
            hint = f" (distribution {', '.join(known)})" if known else ""
            problems.append(f"{name}:{line}: imports {module!r}{hint}, which {wheel.name} does not declare")
    allowed = {canonicalize_name(n) for n in not_imported}
    for dist in sorted(declared.keys() - used - allowed):
        problems.append(
            f"declares {dist} but imports none of its modules (if it is used without an import, "
            "list it in [tool.arctic.check-wheels] not-imported)"
        )
    for dist in sorted(allowed - (declared.keys() - used)):
        problems.append(
            f"[tool.arctic.check-wheels] not-imported lists {dist}, which is imported or undeclared"
        )
    return problems


def check_recipes(wheel: Wheel, folder: Path) -> list[str]:
    recipes = folder / "recipes"
    if not recipes.is_dir():
        return []
    modules = [m for m in wheel.top_level if f"{m}/__init__.py" in wheel.files]
    if len(modules) != 1:
        return [f"cannot tell which module of {sorted(wheel.top_level)} should hold recipes/"]
    shipped = {
        n.removeprefix(f"{modules[0]}/recipes/")
        for n in wheel.files
        if n.startswith(f"{modules[0]}/recipes/")
    }
    wanted = {
        p.relative_to(recipes).as_posix()
        for p in recipes.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    return [f"the wheel lacks {modules[0]}/recipes/{n}" for n in sorted(wanted - shipped)]


# --- building and installing ---------------------------------------------------------------------


def build(folder: Path, out: Path) -> Path:
    result = run([uv(), "build", "--wheel", "--quiet", "--out-dir", str(out), str(folder)], cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"uv build failed:\n{result.stderr[-3000:]}")
    (wheel,) = out.glob("*.whl")
    return wheel


def make_venv(wheel: Wheel, core: Path, work: Path) -> Path:
    """A fresh venv with the wheel, arctic-core's wheel and the locked third-party versions."""
    venv, requirements = work / "venv", work / "requirements.txt"
    export = ["export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-workspace", "--package", wheel.name]
    wheels = {str(wheel.path)} if wheel.name == "arctic-core" else {str(wheel.path), str(core)}
    python = str(venv / "bin" / "python")
    for cmd in (
        ["venv", "--quiet", "--python", sys.executable, str(venv)],
        [*export, "--quiet", "--output-file", str(requirements)],
        ["pip", "install", "--quiet", "--python", python, "-r", str(requirements), *sorted(wheels)],
    ):
        result = run([uv(), *cmd], cwd=REPO)
        if result.returncode != 0:
            raise RuntimeError(f"`uv {' '.join(cmd[:2])} ...` failed:\n{result.stderr[-3000:]}")
    return venv


def install(wheel: Wheel, core: Path, work: Path) -> list[str]:
    """Install the wheel alone (plus arctic-core) in a fresh venv; run `arctic plugins` and the quickstart."""
    started = time.monotonic()
    try:
        venv = make_venv(wheel, core, work)
    except RuntimeError as exc:
        return [str(exc)]
    print(f"{wheel.name}: installed alone in {time.monotonic() - started:.0f}s", flush=True)
    empty = work / "empty"
    empty.mkdir()
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))]
    env = {
        **os.environ,
        **OFFLINE,
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    env.pop("PYTHONPATH", None)
    arctic = str(venv / "bin" / "arctic")
    listed = run([arctic, "plugins"], cwd=empty, env=env)
    if listed.returncode != 0:
        return [f"`arctic plugins` failed:\n{listed.stdout}{listed.stderr[-3000:]}"]
    problems = check_listing(wheel, listed.stdout) + check_missing_packages(wheel, arctic, empty, env)
    for module in sorted(wheel.top_level):
        if f"{module}/recipes/quickstart.toml" in wheel.files:
            started = time.monotonic()
            problems += train_quickstart(str(venv / "bin" / "python"), arctic, module, empty, env)
            print(f"{wheel.name}: quickstart trained in {time.monotonic() - started:.0f}s", flush=True)
    if "arctic_sft" in wheel.top_level:  # core's verify workers and planner, from installed wheels
        started = time.monotonic()
        problems += verify_and_plan_quickstart(arctic, empty, env)
        print(
            f"{wheel.name}: quickstart verified and planned in {time.monotonic() - started:.0f}s", flush=True
        )
    return problems


def verify_and_plan_quickstart(arctic: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """`arctic sft verify quickstart` (one check, two worker processes) and `arctic sft plan quickstart`."""
    problems = []
    verify = [arctic, "sft", "verify", "quickstart", "--shrink", "--checks", "accumulation", "--samples", "8"]
    verified = run([*verify, "--set", f"logger.output_dir={cwd / 'verify-run'}"], cwd=cwd, env=env)
    if verified.returncode != 0 or "all checks passed" not in verified.stdout:
        problems.append(
            f"arctic sft verify quickstart failed:\n{verified.stdout[-2000:]}{verified.stderr[-3000:]}"
        )
    planned = run([arctic, "sft", "plan", "quickstart", "--hardware", "1xH100"], cwd=cwd, env=env)
    if planned.returncode != 0 or "fits" not in planned.stdout:
        problems.append(
            f"arctic sft plan quickstart failed:\n{planned.stdout[-2000:]}{planned.stderr[-3000:]}"
        )
    return problems


def check_missing_packages(wheel: Wheel, arctic: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """Without the package that provides a method or feature, a recipe using it names that package."""
    recipe = cwd / "needs-others.toml"
    if wheel.name == "arctic-core":  # no method installed: a recipe of type sft names arctic-sft
        recipe.write_text('type = "sft"\n[model]\nname_or_path = "org/model"\n')
        wanted = "pip install arctic-sft"
    elif wheel.name != "arctic-alst" and entry_points(wheel).get("arctic.methods"):
        method = entry_points(wheel)["arctic.methods"][0]
        recipe.write_text(
            f'type = "{method}"\nsequence_parallel_size = 2\n[model]\nname_or_path = "org/model"\n'
        )
        wanted = "pip install arctic-alst"
    else:
        return []
    checked = run([arctic, "config", "check", str(recipe)], cwd=cwd, env=env)
    recipe.unlink()
    if checked.returncode != 2 or wanted not in checked.stderr:
        return [
            f"`arctic config check` of a recipe that needs another package should say {wanted!r} "
            f"(exit {checked.returncode}):\n{checked.stderr[-2000:]}"
        ]
    return []


def entry_points(wheel: Wheel) -> dict[str, list[str]]:
    """The wheel's entry-point names by group."""
    groups: dict[str, list[str]] = {}
    for name, content in wheel.files.items():
        if name.endswith(".dist-info/entry_points.txt"):
            group = ""
            for line in content.decode().splitlines():
                if line.startswith("["):
                    group = line.strip("[] ")
                elif "=" in line:
                    groups.setdefault(group, []).append(line.split("=")[0].strip())
    return groups


def check_listing(wheel: Wheel, output: str) -> list[str]:
    """`arctic plugins` lists the wheel's methods and features, working, as its own."""
    groups = entry_points(wheel)
    names = groups.get("arctic.methods", []) + groups.get("arctic.features", [])
    if not groups.get("arctic.methods") and "No methods installed" not in output:
        return [f"`arctic plugins` lists methods that are not installed:\n{output}"]
    listed = {line.split()[0]: line for line in output.splitlines() if line.strip()}
    problems = [f"`arctic plugins` does not list {n}:\n{output}" for n in names if n not in listed]
    for name in names:
        if name in listed and ("BROKEN" in listed[name] or wheel.name not in listed[name]):
            problems.append(f"`arctic plugins`: {listed[name]}")
    return problems


def train_quickstart(python: str, arctic: str, module: str, cwd: Path, env: dict[str, str]) -> list[str]:
    where = run(
        [python, "-c", f"from arctic_core.recipe import bundled_recipes; print(bundled_recipes({module!r}))"],
        cwd=cwd,
        env=env,
    )
    if where.returncode != 0:
        return [f"bundled_recipes({module!r}) failed:\n{where.stderr[-3000:]}"]
    recipe = Path(where.stdout.strip()) / "quickstart.toml"
    if "site-packages" not in recipe.parts:
        return [f"{recipe} is not inside the installed package"]
    output = cwd / "run"
    trained = run(  # by name, as a user of the installed package runs it
        [
            arctic,
            "train",
            "quickstart",
            "--set",
            "train_iters=2",
            "--set",
            "generation_eval.max_samples=4",
            "--set",
            f"logger.output_dir={output}",
            "--set",
            "logger.progress_bar=false",
            "--set",
            f"data.cache_dir={cwd / 'cache'}",
        ],
        cwd=cwd,
        env=env,
    )
    if trained.returncode != 0:
        return [
            f"the bundled quickstart failed to train (exit {trained.returncode}):\n{trained.stderr[-3000:]}"
        ]
    metrics = output / "metrics.jsonl"
    if not metrics.is_file() or not metrics.read_text().strip():
        return [f"the bundled quickstart wrote no metrics ({metrics})"]
    return []


# --- main --------------------------------------------------------------------------------------


def package_folders(names: list[str]) -> list[Path]:
    if not names:
        return sorted(p for p in (REPO / "packages").iterdir() if (p / "pyproject.toml").is_file())
    folders = []
    for name in names:
        folder = Path(name) if (Path(name) / "pyproject.toml").is_file() else REPO / "packages" / name
        if not (folder / "pyproject.toml").is_file():
            raise SystemExit(f"check_wheels: no package {name!r} (no {folder / 'pyproject.toml'})")
        folders.append(folder.resolve())
    return folders


def check(folder: Path, out: Path, mapping: dict[str, list[str]], core: Path | None) -> tuple[str, list[str]]:
    started = time.monotonic()
    try:
        wheel = Wheel(build(folder, out / folder.name / "dist"))
    except RuntimeError as exc:
        return folder.name, [str(exc)]
    settings = tomllib.loads((folder / "pyproject.toml").read_text()).get("tool", {}).get("arctic", {})
    not_imported = settings.get("check-wheels", {}).get("not-imported", [])
    problems = check_imports(wheel, mapping, not_imported) + check_recipes(wheel, folder)
    if core is not None and not problems:
        problems += install(wheel, core, out / folder.name)
    print(
        f"{wheel.name}: {'ok' if not problems else 'FAILED'} ({time.monotonic() - started:.0f}s)", flush=True
    )
    return wheel.name, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", help="folder names under packages/, or package folders")
    parser.add_argument("--install", action="store_true", help="also install each wheel alone and run it")
    args = parser.parse_args(argv)
    mapping = importlib.metadata.packages_distributions()
    failed = False
    with tempfile.TemporaryDirectory(prefix="arctic-wheels-") as tmp:
        out = Path(tmp)
        core = build(REPO / "packages" / "core", out / "core-wheel") if args.install else None
        for folder in package_folders(args.packages):
            name, problems = check(folder, out, mapping, core)
            for problem in problems:
                print(f"  {name}: {problem}")
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
