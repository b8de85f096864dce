"""`arctic verify`: run the checks' variants as worker processes, compare, report.

The recipe is read and checked here first (a bad recipe exits 2 before anything runs). The
variants of every selected check are collected (checks share some, e.g. the reference run), and
grouped into jobs for `arctic_core.verify.worker`: one process runs all one-rank variants in
turn; the variants of each multi-rank size run in that many processes (ranks started with
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as a launcher would); a variant that kills itself has a
process of its own, followed by the variants waiting for it. Independent lanes run at once.
Everything goes into `<run folder>/verify/` (replaced on every run); only `verify.json` is written
beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from arctic_core.errors import RecipeError
from arctic_core.verify.base import CannotRun, Check, Row, Variant, VariantResult, VerifyContext

DEFAULT_SAMPLES = 16
DEFAULT_STEPS = 5
JOB_TIMEOUT_S = 1200


@attrs.frozen(kw_only=True)
class Options:
    checks: tuple[str, ...] = ()  # empty: the default set
    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    shrink: bool = False


@attrs.frozen(kw_only=True)
class Report:
    recipe: str
    rows: list[Row]
    seconds: float
    shrink: bool
    verify_dir: str

    @property
    def passed(self) -> bool:
        return all(row.status != "FAIL" for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
            "shrink": self.shrink,
            "verify_dir": self.verify_dir,
            "checks": [row.as_dict() for row in self.rows],
        }


# --- choosing checks ------------------------------------------------------------------------------


def _plugin_checks(reference: str | None, where: str) -> list[Check]:
    if not reference:
        return []
    from arctic_core import plugins

    try:
        found = plugins.load_reference(reference)()
    except Exception as exc:  # a broken plugin must not break verify's other checks
        raise RecipeError(
            f"{where}: verify checks {reference!r} cannot load: {type(exc).__name__}: {exc}"
        ) from None
    return list(found)


def available_checks(config: Any) -> tuple[list[Check], list[Check]]:
    """(checks run by default, every check available) for this recipe.

    Default: core's, the recipe's method's, and those of the features the recipe switches on;
    other installed features' checks run when named in --checks.
    """
    from arctic_core import features, plugins
    from arctic_core.verify.checks import core_checks

    default = core_checks()
    found = plugins.get(config.type)
    if found is not None and found.method is not None:
        default += _plugin_checks(getattr(found.method, "verify", None), f"method {found.name}")
    extra: list[Check] = []
    active = set(features.active_features(config).names)
    for item in features.installed():
        if item.feature is None:
            continue
        checks = _plugin_checks(getattr(item.feature, "verify", None), f"feature {item.name}")
        (default if item.name in active else extra).extend(checks)
    return default, default + extra


def select_checks(config: Any, names: Sequence[str]) -> list[Check]:
    default, everything = available_checks(config)
    if not names:
        return default
    by_name = {check.name: check for check in everything}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise RecipeError(
            f"unknown check(s) {', '.join(unknown)}; available: {', '.join(by_name)}", path="--checks"
        )
    return [by_name[name] for name in names]


# --- running variants -----------------------------------------------------------------------------


def collect_variants(planned: list[tuple[Check, list[Variant]]]) -> list[Variant]:
    """Every variant once, in order; two checks may share a variant only if they describe it alike."""
    seen: dict[str, Variant] = {}
    for check, variants in planned:
        for variant in variants:
            if seen.setdefault(variant.name, variant) != variant:
                raise RecipeError(
                    f"check {check.name}: variant {variant.name!r} differs from another check's"
                )
    return list(seen.values())


def lanes(variants: list[Variant]) -> list[list[list[Variant]]]:
    """Lanes (run at once) of jobs (run in turn) of variants (run in turn in one set of processes).

    One-rank variants share one process, those waiting for another variant last (the worker
    waits for that variant's result); each multi-rank variant gets processes of its own (a
    feature may patch libraries for the whole process, e.g. Ulysses attention); a variant that
    kills itself runs alone.
    """
    single = [v for v in variants if v.ranks == 1 and not v.kill_after]
    single.sort(key=lambda v: v.after is not None)  # stable: the waiting ones last
    planned: list[list[list[Variant]]] = [[single]] if single else []
    planned += [[[v]] for v in variants if v.ranks > 1 or v.kill_after]
    return planned


def _launch(job_path: Path, ranks: int, log: Path) -> list[subprocess.Popen[bytes]]:
    from arctic_core.engine.distributed import free_port

    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 4))  # ~4 at once
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    port = str(free_port())
    processes = []
    for rank in range(ranks):
        rank_env = dict(env)
        if ranks > 1:
            rank_env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(ranks),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
        out = open(log.with_name(f"{log.stem}-rank{rank}.log"), "wb")  # noqa: SIM115 (closed with the process)
        command = [sys.executable, "-m", "arctic_core.verify.worker", str(job_path)]
        processes.append(subprocess.Popen(command, env=rank_env, stdout=out, stderr=subprocess.STDOUT))
        out.close()
    return processes


def run_job(base: dict[str, Any], variants: list[Variant], name: str, timeout: float = JOB_TIMEOUT_S) -> None:
    """Run one job's variants (all with the same number of ranks) and wait for it."""
    verify_dir = Path(base["verify_dir"])
    job_path = verify_dir / "jobs" / f"{name}.json"
    job_path.parent.mkdir(parents=True, exist_ok=True)
    job_path.write_text(json.dumps({**base, "variants": [attrs.asdict(v) for v in variants]}))
    processes = _launch(job_path, variants[0].ranks, verify_dir / "logs" / f"{name}.log")
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            process.wait()


def gpu_count() -> int | None:
    """GPUs the variants' ranks would use; None on a machine without CUDA (ranks are CPU processes)."""
    from arctic_core.engine import distributed

    if not distributed.has_cuda():
        return None
    import torch

    return torch.cuda.device_count()


def run_lanes(base: dict[str, Any], planned: list[list[list[Variant]]]) -> None:
    """Lanes at once on CPUs; one after another on GPUs, where every lane's rank r uses GPU r."""

    def run_lane(index: int, jobs: list[list[Variant]]) -> None:
        for number, job in enumerate(jobs):
            run_job(base, job, f"lane{index}-job{number}")

    if gpu_count() is not None:
        for index, jobs in enumerate(planned):
            run_lane(index, jobs)
        return
    threads = [threading.Thread(target=run_lane, args=(i, jobs)) for i, jobs in enumerate(planned)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- the command ----------------------------------------------------------------------------------


def verify(recipe: str, overrides: Sequence[str], *, method: str | None, options: Options) -> Report:
    """Check the recipe, run the selected checks' variants, compare them."""
    from arctic_core.recipe import load_recipe
    from arctic_core.recipe.checks import preflight
    from arctic_core.verify.worker import result_path

    start = time.perf_counter()
    loaded = load_recipe(recipe, overrides, method=method)
    trainer_class = loaded.trainer_class()
    preflight(loaded.config, trainer=trainer_class, source=recipe, warn=lambda _: None)
    if options.steps < 1 or options.samples < 4:
        raise RecipeError("--steps must be at least 1 and --samples at least 4", path="--steps")
    shrink = None
    if options.shrink:
        from arctic_core.verify.shrink import load_shrink_kwargs

        layers = getattr(trainer_class, "shrink_layers", lambda _: 1)(loaded.config)
        shrink = load_shrink_kwargs(loaded.config.model, layers=layers)
    ctx = VerifyContext(
        config=loaded.config,
        trainer_class=trainer_class,
        samples=options.samples,
        steps=options.steps,
        shrink=shrink,
    )
    checks = select_checks(loaded.config, options.checks)
    rows, planned = plan_checks(checks, ctx, gpus=gpu_count())
    verify_dir = Path(loaded.config.run_dir) / "verify"
    shutil.rmtree(verify_dir, ignore_errors=True)
    (verify_dir / "logs").mkdir(parents=True)
    base = {
        "recipe": str(Path(recipe).resolve()),
        "overrides": list(overrides),
        "method": method,
        "shrink": shrink,
        "verify_dir": str(verify_dir.resolve()),
        "samples": options.samples,
    }
    run_lanes(base, lanes(collect_variants(planned)))
    for check, variants in planned:
        results = {v.name: VariantResult.read(result_path(verify_dir, v.name), v.name) for v in variants}
        rows[check.name] = compare_results(check, results)
    for grads in verify_dir.glob("*/grads.pt"):
        grads.unlink()
    ordered = [rows[check.name] for check in checks]
    return Report(
        recipe=recipe,
        rows=ordered,
        seconds=time.perf_counter() - start,
        shrink=options.shrink,
        verify_dir=str(verify_dir),
    )


def plan_checks(
    checks: list[Check], ctx: VerifyContext, *, gpus: int | None = None
) -> tuple[dict[str, Row], list[tuple[Check, list[Variant]]]]:
    """(SKIP rows of the checks that cannot run, the others with their variants).

    A check cannot run when the method's `verify_skips` names it, its `skip_reason` gives a reason,
    its `variants` raise `CannotRun`, or (`gpus`: the machine's GPU count; None: no CUDA, ranks
    are CPU processes and any number runs) its variants need more ranks than GPUs.
    """
    rows: dict[str, Row] = {}
    planned: list[tuple[Check, list[Variant]]] = []
    skips = getattr(ctx.trainer_class, "verify_skips", {})
    for check in checks:
        reason = skips.get(check.name) or check.skip_reason(ctx)
        variants: list[Variant] = []
        if not reason:
            try:
                variants = check.variants(ctx)
            except CannotRun as exc:
                reason = str(exc)
        needed = max((v.ranks for v in variants), default=1)
        if not reason and gpus is not None and needed > gpus:
            reason = f"needs {needed} GPUs (one per rank); this machine has {gpus}"
        if reason:
            rows[check.name] = check.row("SKIP", note=reason)
        else:
            planned.append((check, variants))
    return rows, planned


def compare_results(check: Check, results: dict[str, VariantResult]) -> Row:
    """The check's row: SKIP (with the reason) when one of its variants could not run on this
    recipe, or its `compare` raises `CannotRun`; FAIL when the comparison itself breaks."""
    for result in results.values():
        if result.skipped and not result.error:
            return check.row("SKIP", note=f"{result.name}: {result.skipped}")
    try:
        return check.compare(results)
    except CannotRun as exc:
        return check.row("SKIP", note=str(exc))
    except Exception as exc:  # a comparison that cannot be made is a failed check, said why
        return check.row("FAIL", note=f"cannot compare: {type(exc).__name__}: {exc}")
