"""`arctic verify` on an embed recipe: accumulation is skipped, by design, saying why; ranks runs."""

from __future__ import annotations

from arctic_core.recipe import load_recipe
from arctic_core.recipe.bundled import find_recipe
from arctic_core.verify.base import VerifyContext
from arctic_core.verify.checks import core_checks
from arctic_core.verify.runner import plan_checks


def test_accumulation_is_skipped_for_in_batch_negatives_and_ranks_still_runs() -> None:
    loaded = load_recipe(find_recipe("quickstart", "embed"))
    ctx = VerifyContext(config=loaded.config, trainer_class=loaded.trainer_class(), samples=16, steps=5)
    checks = [c for c in core_checks() if c.name in ("accumulation", "ranks")]
    rows, planned = plan_checks(checks, ctx)
    assert rows["accumulation"].status == "SKIP" and "in-batch negatives" in rows["accumulation"].note
    assert [check.name for check, _ in planned] == ["ranks"]
