"""GRPO training on CPU with the bundled tiny policy: accumulation and two ranks give the one-rank
step (loss and gradients, rollouts fixed by their seeds), resume re-samples the same completions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from rl_support import Recording, run, write_prompts

from arctic_core.engine import distributed
from arctic_core.testing import finish_spawned_rank, read_metrics, start_spawned_rank

# dapo weighs micro-batches by their completion tokens (they differ), batch scaling needs the
# step's std over every rank, beta > 0 builds the reference, num_iterations = 2 trains the second
# step against the sampling policy's log-probs (ratios off 1, clipping active).
HARD = {"loss_type": "dapo", "scale_rewards": "batch", "beta": 0.1, "num_iterations": 2, "epsilon_high": 0.28}
DEADLINE_S = 400


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", 16)


@pytest.fixture(scope="module")
def one_rank(prompts: Path, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """Two steps of 4 prompts x 4 completions in one micro-batch, one rank."""
    return run(prompts, tmp_path_factory.mktemp("one") / "run", **HARD)


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Within 1e-5 of the gradient's scale (prompt padding widths differ between splits: fp32 noise)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), msg=what)


def assert_same_steps(got: Recording, want: Recording) -> None:
    for step, (a, b) in enumerate(zip(got.grads, want.grads, strict=True)):
        assert b.abs().max() > 0
        close(a, b, f"step {step + 1} gradients")
    for a, b in zip(
        read_metrics(got.config.metrics_path), read_metrics(want.config.metrics_path), strict=True
    ):
        for key in ("loss", "reward", "kl", "clip_ratio", "completions/mean_length", "trainable_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_accumulation_2_by_2_equals_1_by_4(one_rank, prompts, tmp_path):
    accumulated = run(prompts, tmp_path / "acc", micro_batch_size=2, gradient_accumulation_steps=2, **HARD)
    assert_same_steps(accumulated, one_rank)
    # the same completions were sampled, split over two micro-batches
    assert accumulated.rollouts == one_rank.rollouts and len(one_rank.rollouts[0]) == 16
    records = read_metrics(one_rank.config.metrics_path)
    assert records[1]["clip_ratio"] > 0 or records[1]["kl"] > 0  # the second iteration is off-policy
    assert records[0]["reward"] > 0 and 0 <= records[0]["frac_reward_zero_std"] <= 1


def rank_main(rank: int, port: int, prompts: str, out: str) -> None:
    start_spawned_rank(rank, 2, port)
    trainer = run(Path(prompts), Path(out) / "run", micro_batch_size=2, **HARD)
    torch.save({"grads": trainer.grads, "metrics": trainer.config.metrics_path}, f"{out}/rank{rank}.pt")
    finish_spawned_rank()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_equal_one_rank(one_rank, prompts, tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        ranks = torch.multiprocessing.spawn(
            rank_main, args=(distributed.free_port(), str(prompts), str(tmp_path)), nprocs=2, join=False
        )
        deadline = time.monotonic() + DEADLINE_S
        while not ranks.join(timeout=5):
            if time.monotonic() > deadline:
                for process in ranks.processes:
                    process.kill()
                pytest.fail(f"the two ranks did not finish within {DEADLINE_S} s")
    saved = torch.load(tmp_path / "rank0.pt")
    for step, (a, b) in enumerate(zip(saved["grads"], one_rank.grads, strict=True)):
        close(a, b, f"step {step + 1} gradients")
    for a, b in zip(read_metrics(saved["metrics"]), read_metrics(one_rank.config.metrics_path), strict=True):
        for key in ("loss", "reward", "kl", "clip_ratio", "completions/mean_length", "trainable_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_resumed_after_step_3_resamples_the_same_completions_and_losses(prompts, tmp_path):
    settings = {"train_iters": 5, "micro_batch_size": 2, "loss_type": "grpo", "beta": 0.05}
    straight = run(prompts, tmp_path / "straight", **settings)
    checkpoint = [{"type": "deepspeed", "save_every_n_steps": 3, "auto_resume": True}]
    first = run(prompts, tmp_path / "resumed", checkpoint=checkpoint, exit_iteration_this_run=3, **settings)
    assert len(first.grads) == 3
    second = run(prompts, tmp_path / "resumed", checkpoint=checkpoint, **settings)
    assert second.run_start_step == 3 and len(second.grads) == 2
    assert second.rollouts == straight.rollouts[3:]  # the same completions
    for a, b in zip(second.grads, straight.grads[3:], strict=True):
        close(a, b, "resumed gradients")
    resumed = {r["step"]: r for r in read_metrics(second.config.metrics_path)}
    for record in read_metrics(straight.config.metrics_path)[3:]:
        for key in ("loss", "reward", "kl", "completions/mean_length"):
            assert resumed[record["step"]][key] == pytest.approx(record[key], rel=1e-6, abs=1e-8), key
