"""Plugin discovery with real (fake-installed) distributions on sys.path, in subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def install_fake(
    site: Path, dist: str, version: str, entries: dict[str, str], modules: dict[str, str]
) -> None:
    """Lay out a minimal installed distribution: a .dist-info with entry points, plus modules."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[arctic.methods]\n{lines}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


def arctic(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "arctic_core", *args], capture_output=True, text=True, env=env, timeout=60
    )


GOOD = """
    from arctic_core.plugins import Method
    plugin = Method(name="{name}", description="fake {name}", config="arctic_demo.config:DemoConfig",
                    trainer="arctic_demo.trainer:DemoTrainer", core_version="{core}")
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return tmp_path / "site"


def test_broken_plugin_is_reported_and_the_rest_works(site):
    install_fake(
        site,
        "arctic-broken",
        "1.2",
        {"broken": "broken_plugin:plugin"},
        {"broken_plugin": "raise ImportError('needs libfoo')\n"},
    )
    listing = arctic(site, "--help")
    assert listing.returncode == 0
    assert "broken" in listing.stdout and "demo" in listing.stdout
    used = arctic(site, "broken", "train", "x.toml")
    assert used.returncode == 1
    assert "needs libfoo" in used.stderr and "arctic-broken 1.2" in used.stderr
    assert "Traceback" not in used.stderr
    assert arctic(site, "plugins").returncode == 0
    assert "BROKEN" in arctic(site, "plugins").stdout


def test_two_plugins_claiming_one_name_fail_naming_both(site, tmp_path):
    install_fake(
        site,
        "arctic-demo-clone",
        "9.9",
        {"demo": "demo_clone:plugin"},
        {"demo_clone": GOOD.format(name="demo", core=">=0.1")},
    )
    result = arctic(site, "demo", "hello", "x.toml")
    assert result.returncode == 1
    assert "arctic-demo 0.0.1" in result.stderr and "arctic-demo-clone 9.9" in result.stderr
    recipe = tmp_path / "r.toml"
    recipe.write_text('type = "demo"\n[model]\nname_or_path = "m"\n')
    check = arctic(site, "config", "check", str(recipe))
    assert check.returncode == 1 and "arctic-demo-clone" in check.stderr


def test_plugin_outside_its_core_range_is_refused(site):
    install_fake(
        site,
        "arctic-future",
        "3.0",
        {"future": "future_plugin:plugin"},
        {"future_plugin": GOOD.format(name="future", core=">=9.0")},
    )
    result = arctic(site, "future", "train", "x.toml")
    assert result.returncode == 1
    assert ">=9.0" in result.stderr and "0.1.0" in result.stderr


def test_good_extra_plugin_is_listed(site):
    install_fake(
        site,
        "arctic-extra",
        "0.5",
        {"extra": "extra_plugin:plugin"},
        {"extra_plugin": GOOD.format(name="extra", core=">=0.1,<1")},
    )
    result = arctic(site, "plugins")
    assert re.search(r"^extra +arctic-extra 0\.5 ", result.stdout, re.MULTILINE), result.stdout
