"""`arctic verify` without training: comparisons, shrinking, planning, the table, the JSON, usage errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest
import torch

from arctic_core.cli import main
from arctic_core.recipe import load_recipe
from arctic_core.verify.base import (
    CannotRun,
    Check,
    Row,
    Variant,
    VariantResult,
    VerifyContext,
    compare_step,
    diff,
    micro_batch_size_for,
)
from arctic_core.verify.checks import PackingCheck, ResumeCheck, core_checks, kill_step
from arctic_core.verify.report import format_table, write_json
from arctic_core.verify.runner import Report, compare_results, lanes, plan_checks
from arctic_core.verify.shrink import shrink_kwargs

pytest_plugins = ["arctic_core.testing.fixtures"]

SFT_RECIPES = Path(__file__).parents[3] / "sft" / "recipes"


def test_diff_is_relative_to_the_reference_scale() -> None:
    assert diff([1.0, 2.0], [1.0, 2.0]) == (0.0, 0.0)
    abs_diff, rel_diff = diff([1.0, 4.2], [1.0, 4.0])
    assert abs_diff == pytest.approx(0.2) and rel_diff == pytest.approx(0.05)
    assert diff([1.0], [1.0, 2.0])[0] == float("inf")
    assert diff([float("nan")], [1.0])[1] == float("inf")


def _result(name: str, tmp_path: Path, grads: list[float], loss: float, **fields: object) -> VariantResult:
    path = tmp_path / f"{name}.pt"
    torch.save(torch.tensor(grads), path)
    return VariantResult(name=name, losses=[loss], grads_path=str(path), **fields)  # type: ignore[arg-type]


def test_compare_step_passes_within_tolerance_and_fails_beyond(tmp_path: Path) -> None:
    check = core_checks()[1]
    reference = _result("reference", tmp_path, [1.0, -2.0], 3.0)
    close = _result("close", tmp_path, [1.0, -2.0 + 1e-7], 3.0)
    off = _result("off", tmp_path, [1.0, -2.02], 3.0)
    assert compare_step(check, reference, close, "x").status == "PASS"
    row = compare_step(check, reference, off, "x")
    assert row.status == "FAIL" and row.max_rel == pytest.approx(0.01)
    broken = VariantResult(name="off", error="RuntimeError: boom")
    assert compare_step(check, reference, broken, "x").note == "off: RuntimeError: boom"
    still = _result("still", tmp_path, [0.0, 0.0], 0.0)  # nothing trains: no proof, whatever the other
    row = compare_step(check, still, _result("other", tmp_path, [0.0, 0.0], 0.0), "x")
    assert row.status == "FAIL" and "gradients are all zero" in row.note


def test_a_loss_zero_by_construction_is_compared_relative_to_its_logged_loss_scale(tmp_path: Path) -> None:
    check = core_checks()[1]
    grads = [1.0, -2.0]
    zero = _result("reference", tmp_path, grads, 0.0)  # no loss_scale: relative to 0, noise fails
    assert compare_step(check, zero, _result("noise", tmp_path, grads, 1e-9), "x").status == "FAIL"
    scaled = _result("reference", tmp_path, grads, 0.0, loss_scales=[0.5])
    row = compare_step(check, scaled, _result("noise", tmp_path, grads, 1e-9), "x")
    assert row.status == "PASS" and row.max_rel == pytest.approx(2e-9) and "of loss_scale" in row.note
    row = compare_step(check, scaled, _result("off", tmp_path, grads, 1e-3), "x")  # a real difference
    assert row.status == "FAIL" and row.max_rel == pytest.approx(2e-3)
    row = compare_step(check, scaled, _result("grads", tmp_path, [1.0, -2.02], 1e-9), "x")
    assert row.status == "FAIL" and row.max_rel == pytest.approx(0.01)  # gradients stay strict


def test_resume_compare_needs_bit_identical_losses_and_a_real_resume() -> None:
    straight = VariantResult(name="resume-straight", losses=[3.0, 2.5, 2.25])
    killed = VariantResult(name="resume-killed", losses=[3.0], killed=True)
    good = VariantResult(name="resume-rerun", losses=[3.0, 2.5, 2.25], start_step=1)
    results = {"resume-straight": straight, "resume-killed": killed, "resume-rerun": good}
    assert ResumeCheck().compare(results).status == "PASS"
    off_by_ulp = VariantResult(name="resume-rerun", losses=[3.0, 2.5, 2.2500000000000004], start_step=1)
    row = ResumeCheck().compare({**results, "resume-rerun": off_by_ulp})
    assert row.status == "FAIL" and "first differing step 3" in row.note
    fresh = VariantResult(name="resume-rerun", losses=[3.0, 2.5, 2.25], start_step=0)
    assert "started at step 0" in ResumeCheck().compare({**results, "resume-rerun": fresh}).note
    alive = VariantResult(name="resume-killed", losses=[3.0])
    assert ResumeCheck().compare({**results, "resume-killed": alive}).status == "FAIL"


def test_kill_step_is_odd_and_before_the_end() -> None:
    for steps in range(2, 12):
        s = kill_step(steps)
        assert 1 <= s < steps and s % 2 == 1


def test_shrink_keeps_the_architecture_and_vocabulary() -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=300,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    kwargs = shrink_kwargs(config)
    assert kwargs["num_hidden_layers"] == 2 and kwargs["hidden_size"] == 64
    assert kwargs["num_key_value_heads"] == 2 and len(kwargs.get("layer_types", [None, None])) == 2
    for key, value in kwargs.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config)
    assert model.config.vocab_size == 300 and len(model.model.layers) == 2
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 300)


def test_lanes_run_one_rank_variants_together_the_rerun_last_and_the_killed_run_alone() -> None:
    resume = ResumeCheck().variants(VerifyContext(config=None, trainer_class=object, samples=16, steps=5))
    variants = [Variant(name="reference"), Variant(name="ranks", ranks=2), *resume]
    planned = [[[v.name for v in job] for job in lane] for lane in lanes(variants)]
    assert planned == [[["reference", "resume-straight", "resume-rerun"]], [["ranks"]], [["resume-killed"]]]


def test_table_and_json_shape(tmp_path: Path) -> None:
    rows = [
        Row(
            check="packing",
            compared="a vs b",
            status="PASS",
            max_abs=1e-7,
            max_rel=2e-7,
            tolerance="rel 1e-05",
        ),
        Row(check="resume", compared="c vs d", status="FAIL", note="first differing step 4"),
        Row(check="precision", compared="bf16", status="REPORT", max_abs=0.01, max_rel=0.002),
    ]
    report = Report(recipe="r.toml", rows=rows, seconds=12.0, shrink=True, verify_dir="runs/r/verify")
    table = format_table(report)
    assert table.splitlines()[0].split() == [
        "check",
        "result",
        "max",
        "abs",
        "max",
        "rel",
        "tolerance",
        "compared",
    ]
    assert "FAILED: resume" in table and "first differing step 4" in table
    write_json(report, tmp_path / "verify.json")
    data = json.loads((tmp_path / "verify.json").read_text())
    assert data["passed"] is False and data["recipe"] == "r.toml"
    assert [r["status"] for r in data["checks"]] == ["PASS", "FAIL", "REPORT"]
    assert set(data["checks"][0]) == {
        "check",
        "compared",
        "status",
        "max_abs",
        "max_rel",
        "tolerance",
        "note",
    }


def test_packing_is_skipped_with_the_reason_for_dpo() -> None:
    recipe = load_recipe(SFT_RECIPES / "dpo-tiny.toml")
    ctx = VerifyContext(config=recipe.config, trainer_class=recipe.trainer_class(), samples=16, steps=5)
    assert "preference pairs are never packed" in (PackingCheck().skip_reason(ctx) or "")


def test_a_check_needing_more_ranks_than_gpus_is_skipped_with_the_reason() -> None:
    recipe = load_recipe(SFT_RECIPES / "quickstart.toml")
    ctx = VerifyContext(config=recipe.config, trainer_class=recipe.trainer_class(), samples=16, steps=5)
    checks = [c for c in core_checks() if c.name in ("accumulation", "ranks")]
    rows, planned = plan_checks(checks, ctx, gpus=1)
    assert [check.name for check, _ in planned] == ["accumulation"]
    assert (
        rows["ranks"].status == "SKIP"
        and "needs 2 GPUs (one per rank); this machine has 1" in rows["ranks"].note
    )
    rows, planned = plan_checks(checks, ctx, gpus=None)  # CPU ranks: any number runs
    assert not rows and len(planned) == 2


def _exit_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_a_bad_recipe_or_check_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('type = "sft"\nmicro_batch_size = 0\n[model]\nname_or_path = "x"\n')
    assert _exit_code(["verify", str(bad)]) == 2
    assert "micro_batch_size" in capsys.readouterr().err
    assert _exit_code(["sft", "verify", "quickstart", "--checks", "packing,nope"]) == 2
    assert "unknown check(s) nope; available: packing, accumulation" in capsys.readouterr().err


def test_micro_batches_are_sized_from_the_rows_the_data_gives_or_the_variant_cannot_run() -> None:
    resume = ResumeCheck().variants(_quickstart_ctx(steps=5))[0]
    assert resume.steps_per_epoch == 2 and resume.accumulation == 2 and not resume.whole_batch
    assert not any(s.startswith("micro_batch_size") for s in resume.set)  # not from the sample count
    assert micro_batch_size_for(resume, rows=16, dp_size=1) == 4
    assert micro_batch_size_for(resume, rows=7, dp_size=1, samples=16) == 1  # 16 samples packed into 7 rows
    with pytest.raises(
        CannotRun, match=r"3 training row\(s\) \(16 samples packed\); resume-straight needs at least 4"
    ):
        micro_batch_size_for(resume, rows=3, dp_size=1, samples=16)
    ranks = Variant(name="ranks", ranks=2, accumulation=1)
    assert micro_batch_size_for(ranks, rows=16, dp_size=2) == 8
    with pytest.raises(CannotRun, match="cannot be split into 4 equal micro-batches"):
        micro_batch_size_for(attrs.evolve(ranks, accumulation=2), rows=14, dp_size=2)
    with pytest.raises(CannotRun, match="needs at least 2"):
        micro_batch_size_for(ranks, rows=1, dp_size=2)


def _quickstart_ctx(steps: int = 5) -> VerifyContext:
    recipe = load_recipe(SFT_RECIPES / "quickstart.toml")
    return VerifyContext(config=recipe.config, trainer_class=recipe.trainer_class(), samples=16, steps=steps)


@pytest.mark.parametrize("name", ["packing", "accumulation", "ranks", "resume", "precision"])
def test_each_core_check_is_skipped_with_the_reason_when_a_variant_cannot_run(name: str) -> None:
    """A worker that raises CannotRun reports `skipped`: every check using that variant is SKIP, not FAIL."""
    check = next(c for c in core_checks() if c.name == name)
    _, planned = plan_checks([check], _quickstart_ctx())
    variants = planned[0][1]
    for index, variant in enumerate(variants):
        results = {v.name: VariantResult(name=v.name, losses=[1.0]) for v in variants}
        results[variant.name] = VariantResult(name=variant.name, skipped="the data gives 3 training row(s)")
        row = compare_results(check, results)
        assert row.status == "SKIP" and row.note == f"{variant.name}: the data gives 3 training row(s)", (
            index,
            row,
        )
    broken = {v.name: VariantResult(name=v.name, error="RuntimeError: boom") for v in variants}
    assert compare_results(check, broken).status == "FAIL"  # an error is never a SKIP


def test_a_check_that_cannot_plan_or_compare_is_skipped_and_resume_needs_two_steps() -> None:
    class Unplannable(Check):
        name = "unplannable"

        def variants(self, ctx: VerifyContext) -> list[Variant]:
            raise CannotRun("needs a model with 2 layers")

    class Incomparable(Check):
        name = "incomparable"

        def compare(self, results: Mapping[str, VariantResult]) -> Row:
            raise CannotRun("the runs gave nothing to compare")

    rows, planned = plan_checks([Unplannable(), ResumeCheck()], _quickstart_ctx(steps=1))
    assert not planned
    assert rows["unplannable"].status == "SKIP" and rows["unplannable"].note == "needs a model with 2 layers"
    assert rows["resume"].status == "SKIP" and rows["resume"].note == "needs --steps 2 or more"
    row = compare_results(Incomparable(), {})
    assert row.status == "SKIP" and row.note == "the runs gave nothing to compare"
