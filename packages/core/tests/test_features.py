"""Feature plugins: discovery, recipe keys for every method, refusal without the package, hook order.

The installed test-only `arctic-demo` provides `demo_feature` (keys `demo_freeze_embeddings`,
`demo_mask_first_labels`); broken and conflicting features are fake distributions on
PYTHONPATH, run in subprocesses.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest

from arctic_core import features
from arctic_core.config import ModelConfig, TrainerConfig
from arctic_core.errors import RecipeError
from arctic_core.features import Feature, FeatureHooks, FeatureSet, active_features
from arctic_core.recipe import load_recipe
from arctic_core.recipe.render import render

BASE = {"type": "demo", "model": {"name_or_path": "some/model"}}


def arctic(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "arctic_core", *args], capture_output=True, text=True, env=env, timeout=120
    )


def write_recipe(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(f'type = "demo"\n{extra}\n[model]\nname_or_path = "some/model"\n')
    return path


# --- discovery and the recipe keys of an installed feature -----------------------------------------


def test_plugins_lists_the_demo_feature():
    result = arctic("plugins")
    assert result.returncode == 0, result.stderr
    listing = words(result.stdout).split("Features")
    assert len(listing) == 2 and "demo_feature arctic-demo 0.0.1 Test-only feature" in listing[1]
    assert "demo_feature" not in listing[0]  # a feature is not a method


def test_feature_keys_are_typed_top_level_fields_of_every_method():
    from arctic_demo.config import DemoConfig
    from arctic_sft.config import SFTConfig

    for method, config_class in (("demo", DemoConfig), ("sft", SFTConfig)):
        config = load_recipe(None, data={**BASE, "type": method, "demo_mask_first_labels": "1K"}).config
        assert config.demo_mask_first_labels == 1000  # type: ignore[attr-defined]
        assert config.demo_freeze_embeddings is False  # type: ignore[attr-defined]
        assert isinstance(config, config_class) and type(config) is not config_class
    shown = render(config)
    assert "demo_freeze_embeddings: false\ndemo_mask_first_labels: 1000\n" in shown
    assert load_recipe(
        None, data=BASE, overrides=["demo_freeze_embeddings=true"]
    ).config.demo_freeze_embeddings


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("demo_freeze_embeddings=1", "demo_freeze_embeddings: expected true or false, got 1"),
        ("demo_mask_first_labels=-1", "demo_mask_first_labels: must be >= 0"),
        (
            "demo_mask_first_label=2",
            "demo_mask_first_label: unknown key; did you mean 'demo_mask_first_labels'?",
        ),
        # the feature's check(), at load: `arctic config check` catches it
        ("demo_mask_first_labels=8192", "demo_mask_first_labels: must be below data.max_length (8192)"),
    ],
)
def test_feature_keys_are_validated(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(None, data=BASE, overrides=[override])
    assert message in str(caught.value)


def test_config_show_and_check_through_the_cli(tmp_path):
    recipe = write_recipe(tmp_path, "demo_mask_first_labels = 2")
    shown = arctic("config", "show", str(recipe), "--format", "toml", "--set", "demo_freeze_embeddings=true")
    assert shown.returncode == 0, shown.stderr
    assert "demo_freeze_embeddings = true\ndemo_mask_first_labels = 2\n" in shown.stdout
    again = tmp_path / "again.toml"
    again.write_text(shown.stdout)
    assert arctic("config", "show", str(again), "--format", "toml").stdout == shown.stdout
    bad = arctic("config", "check", str(recipe), "--set", "demo_mask_first_labels=9000")
    assert bad.returncode == 2 and "demo_mask_first_labels: must be below" in bad.stderr


def test_configs_with_feature_keys_pickle_and_copy():
    config = load_recipe(None, data={**BASE, "demo_mask_first_labels": 3}).config
    again = pickle.loads(pickle.dumps(config))
    assert again == config and type(again) is type(config)


# --- keys of Arctic's own features, without their package ------------------------------------------


@pytest.fixture
def without_alst(monkeypatch):
    """Feature discovery as in an environment where arctic-alst is not installed."""
    found = {name: f for name, f in features._discover().items() if f.package != "arctic-alst"}
    monkeypatch.setattr(features, "_discover", lambda: found)


def test_neutral_alst_keys_load_without_arctic_alst(without_alst):
    neutral = {
        "sequence_parallel_size": 1,
        "tiled_mlp_compute": False,
        "activation_checkpoint_cpu_offload": False,
    }
    config = load_recipe(None, data={**BASE, **neutral}).config
    assert not hasattr(config, "sequence_parallel_size")


@pytest.mark.parametrize(
    "extra", [{"sequence_parallel_size": 2}, {"sequence_parallel_size": True}, {"tiled_mlp_compute": True}]
)
def test_other_alst_values_exit_2_naming_the_package(without_alst, extra):
    (key,) = extra
    with pytest.raises(RecipeError) as error:
        load_recipe(None, data={**BASE, **extra, "micro_bach_size": 2})
    assert error.value.exit_code == 2
    # named with the package, and reported together with the recipe's other problems
    assert (
        key,
        "needs the arctic-alst package, which is not installed: pip install arctic-alst",
    ) in error.value.problems
    assert any(path == "micro_bach_size" for path, _ in error.value.problems)


# --- hooks ------------------------------------------------------------------------------------------


def test_features_that_are_off_cost_nothing():
    code = (
        "import sys\n"
        "from arctic_core.recipe import load_recipe\n"
        "from arctic_core.features import active_features, NO_FEATURES\n"
        "config = load_recipe(None, data={'type': 'demo', 'model': {'name_or_path': 'm'}}).config\n"
        "assert active_features(config) is NO_FEATURES\n"
        "loaded = [m for m in ('arctic_demo.feature', 'torch') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plain = TrainerConfig(model=ModelConfig(name_or_path="m"))  # built without the loader
    assert active_features(plain) is features.NO_FEATURES and not active_features(plain)


def test_the_demo_feature_is_on_when_a_key_is_off_its_default():
    config = load_recipe(None, data={**BASE, "demo_freeze_embeddings": True}).config
    found = active_features(config)
    assert found.names == ["demo_feature"]
    assert found.hooks[0].settings() == {"demo_freeze_embeddings": True, "demo_mask_first_labels": 0}


FAKE = Feature(name="fake", description="", config="x:Y", hooks="x:Z")


class Recorder(FeatureHooks):
    """Appends its tag to what each hook passes along, so the order shows."""

    def __init__(self, tag: str, sizes: dict[str, int] | None = None):
        super().__init__(TrainerConfig(model=ModelConfig(name_or_path="m")), attrs.evolve(FAKE, name=tag))
        self.tag, self.sizes, self.calls = tag, sizes or {}, []

    def parallel_sizes(self) -> dict[str, int]:
        return self.sizes

    def before_model(self, trainer: Any) -> None:
        trainer.append(self.tag)

    def transform_model(self, trainer: Any, model: Any) -> Any:
        return [*model, self.tag]

    def wrap_loader(self, trainer: Any, loader: Any) -> Any:
        return [*loader, self.tag]

    def prepare_batch(self, trainer: Any, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, "tags": [*batch.get("tags", []), self.tag]}


def test_feature_set_applies_hooks_in_order():
    both = FeatureSet((Recorder("a", {"sequence_parallel_size": 2}), Recorder("b", {"x_size": 3})))
    trainer: list[str] = []
    both.before_model(trainer)  # type: ignore[arg-type]
    assert trainer == ["a", "b"]
    assert both.transform_model(trainer, []) == ["a", "b"]  # type: ignore[arg-type]
    assert both.wrap_loader(trainer, []) == ["a", "b"]  # type: ignore[arg-type]
    assert both.prepare_batch(trainer, {"input_ids": 1}) == {"input_ids": 1, "tags": ["a", "b"]}  # type: ignore[arg-type]
    assert both.parallel_sizes() == {"sequence_parallel_size": 2, "x_size": 3}
    assert FeatureSet().prepare_batch(trainer, {"k": 1}) == {"k": 1}  # type: ignore[arg-type]


def test_features_asking_for_different_parallel_sizes_are_refused():
    agree = FeatureSet((Recorder("a", {"sp": 2}), Recorder("b", {"sp": 2})))
    assert agree.parallel_sizes() == {"sp": 2}
    clash = FeatureSet((Recorder("a", {"sp": 2}), Recorder("b", {"sp": 4})))
    with pytest.raises(RecipeError, match=r"sp: feature 'a' needs 2 and feature 'b' needs 4"):
        clash.check()


# --- broken and conflicting feature plugins (fake distributions, in subprocesses) ---------------------


def words(text: str) -> str:
    return " ".join(text.split())


def install_fake_feature(site: Path, dist: str, name: str, module: str, source: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[arctic.features]\n{name} = {module}:feature\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


FEATURE_SOURCE = """
    import attrs
    from arctic_core.config import setting
    from arctic_core.features import Feature, FeatureHooks

    @attrs.frozen(kw_only=True)
    class Keys:
        {key}: int = setting(0, doc="A fake key.")

    feature = Feature(name="{name}", description="fake", config="{module}:Keys", hooks="{module}:FeatureHooks")
"""


def test_a_broken_feature_plugin_does_not_break_the_cli(tmp_path):
    site = tmp_path / "site"
    install_fake_feature(
        site, "arctic-broken", "broken", "broken_feature", "raise ImportError('needs libfoo')\n"
    )
    assert arctic("--help", site=site).returncode == 0
    listing = arctic("plugins", site=site)
    assert listing.returncode == 0
    assert "broken arctic-broken 1.0 BROKEN: ImportError: needs libfoo" in words(listing.stdout)
    assert "demo_feature arctic-demo" in words(listing.stdout)
    good = write_recipe(tmp_path, "demo_mask_first_labels = 1")
    assert arctic("config", "check", str(good), site=site).returncode == 0
    used = arctic("config", "check", str(write_recipe(tmp_path, "broken_key = 3")), site=site)
    assert used.returncode == 2 and "Traceback" not in used.stderr
    assert "broken_key: unknown key; it may belong to a feature plugin that is broken" in used.stderr
    assert "arctic-broken 1.0" in used.stderr and "needs libfoo" in used.stderr


def test_two_features_claiming_one_key_are_both_refused(tmp_path):
    site = tmp_path / "site"
    for name in ("one", "two"):
        source = FEATURE_SOURCE.format(key="shared_size", name=name, module=f"{name}_feature")
        install_fake_feature(site, f"arctic-{name}", name, f"{name}_feature", source)
    listing = words(arctic("plugins", site=site).stdout)
    assert "one arctic-one 1.0 BROKEN: recipe key 'shared_size' is also claimed by feature 'two'" in listing
    used = arctic("config", "check", str(write_recipe(tmp_path, "shared_size = 2")), site=site)
    assert used.returncode == 2 and "arctic-one 1.0" in used.stderr and "arctic-two 1.0" in used.stderr


def test_a_feature_key_that_a_method_already_has_is_an_error(tmp_path):
    site = tmp_path / "site"
    source = FEATURE_SOURCE.format(key="seed", name="seedy", module="seedy_feature")
    install_fake_feature(site, "arctic-seedy", "seedy", "seedy_feature", source)
    result = arctic("config", "check", str(write_recipe(tmp_path)), site=site)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "feature 'seedy' (arctic-seedy 1.0) adds the recipe key 'seed'" in result.stderr
