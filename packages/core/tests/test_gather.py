"""`arctic_core.gather`: the differentiable all-gather on two real CPU ranks (gloo), and the ZeRO-3 helpers.

The all-gather is proven the way a contrastive trainer uses it: a global batch of (query, document)
pairs is split unevenly over 2 spawned ranks; each rank encodes its half with the same linear
encoder, gathers every rank's document embeddings, and backpropagates w_r times its InfoNCE loss
(mean over its q_r local queries against all Q documents; w_r = q_r/Q). The encoder gradients,
summed over ranks, must equal the gradient of the one-rank loss on the whole global batch. The
same two ranks copy parameters partitioned over both of them (`init_parameters_from`, ZeRO-3), and
sum partial scores with `all_reduce_sum_with_grad` the way DPO does under sequence parallelism (each
rank a slice of every sequence, the same loss and weight on both): summed gradients = one rank's.
The same spawn runs the lockstep helpers with uneven shards (3 items against 1, 2 against 0, 0
against 3, none at all): `sharded_map` must return each rank's own results, in order, and call `fn`
(here a collective, as a ZeRO-3 forward is) as often on both ranks; `agree_max` must give the
maximum; and `evals.generation_accuracy` (a site built on them) must count every held-out pair once
on two ranks and run the model as often on both. A rank out of step hangs: the spawn is joined
with a deadline. The other ZeRO-3 tests run on one rank with DeepSpeed's CPU accelerator, on
parameters built under `deepspeed.zero.Init` (partitioned: empty until gathered).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from arctic_core.engine import distributed
from arctic_core.gather import (
    agree_max,
    all_gather_detached,
    all_gather_with_grad,
    all_reduce_sum_with_grad,
    gathered_parameters,
    gathered_state_dict,
    init_parameters_from,
    lockstep,
    sharded_map,
)
from arctic_core.testing import finish_spawned_rank, start_spawned_rank

pytest_plugins = ["arctic_core.testing.fixtures"]

WIDTH, EMBED, TAU = 8, 6, 0.5
SPLITS = [(4, 4), (3, 6), (1, 5)]
"""Rows held by rank 0 and rank 1 in each scenario."""
ZERO3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
"""fp32 (no dtype argument: DeepSpeed 0.19's `zero.Init(dtype=...)` picks bf16 on CPU whatever is asked)."""


def encoder() -> torch.nn.Linear:
    return seeded_linear(0)


def seeded_linear(seed: int) -> torch.nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Linear(WIDTH, EMBED)


def global_batch(total: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(total)
    return torch.randn(total, WIDTH, generator=g), torch.randn(total, WIDTH, generator=g)


def info_nce(queries: torch.Tensor, docs: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over queries of −log softmax(q·d / τ)[positive] over all documents."""
    return F.cross_entropy(queries @ docs.T / TAU, positives)


def one_rank_grads(total: int) -> dict[str, torch.Tensor]:
    model = encoder()
    queries, docs = global_batch(total)
    info_nce(model(queries), model(docs), torch.arange(total)).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def rank_scenario(rank: int, sizes: tuple[int, int]) -> dict[str, torch.Tensor]:
    """This rank's share of the contrastive step; returns the encoder gradients summed over ranks."""
    total, start = sum(sizes), sum(sizes[:rank])
    model = encoder()
    queries, docs = (t[start : start + sizes[rank]] for t in global_batch(total))
    local_docs = model(docs)
    all_docs = all_gather_with_grad(local_docs)
    assert all_docs.shape == (total, EMBED)
    torch.testing.assert_close(all_docs[start : start + sizes[rank]], local_docs, atol=0, rtol=0)
    positives = torch.arange(start, start + sizes[rank])
    loss = info_nce(model(queries), all_docs, positives) * (sizes[rank] / total)
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        assert param.grad is not None
        torch.distributed.all_reduce(param.grad)
        grads[name] = param.grad
    return grads


def partial_scores(model: torch.nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """Per-sequence scores `[rows]`: the sum over the given positions of a per-token score."""
    return torch.tanh(model(tokens)).sum(dim=(1, 2))


def score_loss(scores: torch.Tensor) -> torch.Tensor:
    """Nonlinear in the whole sequences' scores (as DPO's log-sigmoid of their differences)."""
    return -F.logsigmoid(scores[0] - scores[1]) + scores[2] ** 2


def summed_scores_grads(rank: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """3 sequences of 7 positions; rank r of 2 holds positions [4r, 4r+4); None: one rank, all of them."""
    model = encoder()
    tokens = torch.randn(3, 7, WIDTH, generator=torch.Generator().manual_seed(7))
    if rank is None:
        scores = partial_scores(model, tokens)
        score_loss(scores).backward()
        return scores.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    scores = all_reduce_sum_with_grad(partial_scores(model, tokens[:, 4 * rank : 4 * rank + 4]))
    with torch.no_grad():
        detached = all_reduce_sum_with_grad(partial_scores(model, tokens[:, 4 * rank : 4 * rank + 4]))
    assert not detached.requires_grad
    torch.testing.assert_close(detached, scores.detach(), atol=0, rtol=0)
    (score_loss(scores) * 0.5).backward()  # the same weight w on both ranks: w / N = 1/2
    grads = {}
    for name, param in model.named_parameters():
        assert param.grad is not None
        torch.distributed.all_reduce(param.grad)
        grads[name] = param.grad
    return scores.detach(), grads


def rank_zero3() -> dict[str, dict[str, torch.Tensor]]:
    """`init_parameters_from` between parameters partitioned over both ranks; their gathered states."""
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path=ZERO3):
        src, dst = seeded_linear(1), seeded_linear(2)
    assert 0 < dst.weight.ds_tensor.numel() < dst.weight.ds_numel  # each rank holds a part
    init_parameters_from(dst.parameters(), src.parameters(), zero3=True)
    return {"src": gathered_state_dict(src, zero3=True), "dst": gathered_state_dict(dst, zero3=True)}


SHARDS = [(3, 1), (2, 0), (0, 3), (0, 0)]
"""Items held by rank 0 and rank 1 in each lockstep scenario."""
DEADLINE_S = 240
"""How long the two ranks may take; past it they are out of step (a hang) and the test fails."""


def rank_sharded_map(rank: int, sizes: tuple[int, int]) -> dict[str, Any]:
    """`sharded_map` over this rank's items; `fn` all-reduces (as a ZeRO-3 forward gathers) and counts."""
    seen: list[int] = []
    fillers: list[int] = []

    def forward(item: int) -> int:
        torch.distributed.all_reduce(torch.ones(1))
        seen.append(item)
        return item * 10

    def filler() -> int:
        fillers.append(-1)
        return -1

    items = [100 * rank + i for i in range(sizes[rank])]
    results = sharded_map(forward, items, filler=filler)
    calls = all_gather_detached(torch.tensor([len(seen)])).tolist()
    return {"results": results, "seen": seen, "fillers": len(fillers), "calls": calls}


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    from arctic_core.engine.checkpoint import stop_token_ids

    return stop_token_ids(model.config, model.generation_config, tokenizer)


def held_out_pairs(count: int) -> list[tuple[list[dict[str, str]], str]]:
    """`count` prompts; the reference answer of every even one is the tiny model's own greedy answer."""
    from arctic_core import evals
    from arctic_core.testing import tiny_model, tiny_tokenizer

    model, tokenizer = tiny_model(seed=5), tiny_tokenizer()
    stops = stop_ids(model, tokenizer)
    pairs = []
    for i in range(count):
        prompt = [{"role": "user", "content": f"What is {i} + {2 * i + 1}?"}]
        inputs = evals.left_padded(tokenizer, [prompt], stops[0])
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=4, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
            )
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        pairs.append((prompt, answer if i % 2 == 0 else answer + " (wrong)"))
    return pairs


def rank_generation_accuracy(rank: int, pairs: list) -> dict[str, list[int]]:
    """Both ranks' (correct, total) and model calls (synced_gpus all-reduces at every decoding step)."""
    from arctic_core import evals
    from arctic_core.testing import tiny_model, tiny_tokenizer

    model, tokenizer = tiny_model(seed=5), tiny_tokenizer()
    forwards: list[int] = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    correct, total = evals.generation_accuracy(
        model,
        tokenizer,
        pairs,
        stop_ids=stop_ids(model, tokenizer),
        max_new_tokens=4,
        batch_size=1,
        rank=rank,
        world_size=2,
        zero3=True,
    )
    counts = all_gather_detached(torch.tensor([[correct, total, len(forwards)]]))
    return {
        "correct": counts[:, 0].tolist(),
        "total": counts[:, 1].tolist(),
        "forwards": counts[:, 2].tolist(),
    }


def rank_lockstep(rank: int, pairs: list) -> dict[object, Any]:
    """Every lockstep check of this rank."""
    results: dict[object, Any] = {sizes: rank_sharded_map(rank, sizes) for sizes in SHARDS}
    subgroup = torch.distributed.new_group([0, 1])
    results["agree_max"] = [agree_max(5 * rank + 2), agree_max(-rank, group=subgroup), agree_max(3)]
    mine = 2 - 2 * rank  # rank 0: 2 items from an iterator (count given), rank 1: none
    results["rounds"] = list(lockstep(iter(range(mine)), filler=lambda: -1, count=mine))
    results["accuracy"] = {n: rank_generation_accuracy(rank, pairs[:n]) for n in (3, 1)}
    return results


def rank_main(rank: int, port: int, out: str, pairs: list) -> None:
    """One spawned rank: every scenario, a detached gather, the ZeRO-3 copy, lockstep; saves its results."""
    start_spawned_rank(rank, 2, port)
    results: dict[object, object] = {sizes: rank_scenario(rank, sizes) for sizes in SPLITS}
    ids = torch.arange(rank * 10, rank * 10 + 2 + rank).unsqueeze(1).expand(-1, 3)  # 2 and 3 rows
    results["detached"] = all_gather_detached(ids.float().requires_grad_())
    results["zero3"] = rank_zero3()
    results["summed"] = summed_scores_grads(rank)
    results["lockstep"] = rank_lockstep(rank, pairs)
    torch.save(results, f"{out}.{rank}")
    finish_spawned_rank()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list]:
    """Both ranks' results of one spawn of `rank_main`, and the held-out pairs it scored.

    Fails if the ranks have not finished by the deadline (killing them): ranks out of step hang.
    """
    out = str(tmp_path_factory.mktemp("two-ranks") / "rank")
    pairs = held_out_pairs(3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks
        ranks = torch.multiprocessing.spawn(
            rank_main, args=(distributed.free_port(), out, pairs), nprocs=2, join=False
        )
        deadline = time.monotonic() + DEADLINE_S
        while not ranks.join(timeout=5):
            if time.monotonic() > deadline:
                for process in ranks.processes:
                    process.kill()
                pytest.fail(f"the two ranks did not finish within {DEADLINE_S} s: out of step (a hang)")
    return [torch.load(f"{out}.{rank}") for rank in range(2)], pairs


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_all_gather_gives_the_one_rank_gradient_and_zero3_copies(two_ranks):
    results = two_ranks[0][0]
    for sizes in SPLITS:
        expected = one_rank_grads(sum(sizes))
        assert results[sizes].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(
                results[sizes][name], grad, atol=1e-6, rtol=1e-6, msg=f"{sizes} {name}"
            )
    detached = results["detached"]
    assert not detached.requires_grad
    assert detached[:, 0].tolist() == [0, 1, 10, 11, 12]
    scores, grads = results["summed"]
    expected_scores, expected_grads = summed_scores_grads(None)
    torch.testing.assert_close(scores, expected_scores, atol=1e-6, rtol=1e-6)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-6, msg=f"summed {name}")
    copied, fresh = results["zero3"], seeded_linear(2).state_dict()
    assert copied["dst"].keys() == copied["src"].keys() == fresh.keys()
    for name, value in copied["src"].items():
        assert torch.equal(copied["dst"][name], value) and not torch.equal(value, fresh[name]), name


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_with_uneven_shards_run_in_lockstep(two_ranks):
    ranks, pairs = two_ranks
    for sizes in SHARDS:
        rounds = max(sizes)
        for rank, result in enumerate(r["lockstep"][sizes] for r in ranks):
            items = [100 * rank + i for i in range(sizes[rank])]
            assert result["results"] == [10 * i for i in items], (sizes, rank)  # own items, in order
            assert result["seen"] == items + [-1] * (rounds - len(items)), (sizes, rank)
            assert result["fillers"] == int(len(items) < rounds), (sizes, rank)  # built once, if at all
            assert result["calls"] == [rounds, rounds], (sizes, rank)
    for rank, result in enumerate(r["lockstep"] for r in ranks):
        assert result["agree_max"] == [7, 0, 3], rank
        assert result["rounds"] == ([(0, True), (1, True)] if rank == 0 else [(-1, False), (-1, False)])
    assert sum(1 for _, answer in pairs if not answer.endswith("(wrong)")) == 2
    for n, correct in ((3, 2), (1, 1)):  # the model's own answer for pairs 0 and 2; pair 0 is the filler
        accuracy = ranks[0]["lockstep"]["accuracy"][n]
        assert accuracy == ranks[1]["lockstep"]["accuracy"][n]
        assert sum(accuracy["correct"]) == correct and accuracy["total"] == [
            len(pairs[:n][r::2]) for r in (0, 1)
        ]
        assert accuracy["forwards"][0] == accuracy["forwards"][1] > 0, n


def test_lockstep_on_one_rank_is_a_plain_map():
    def boom() -> int:
        raise AssertionError("no filler on one rank")

    assert agree_max(4) == 4
    assert sharded_map(lambda x: x + 1, [1, 2], filler=boom) == [2, 3]
    assert list(lockstep([], filler=boom)) == []
    with pytest.raises(TypeError, match="count="):
        lockstep(iter([1]), filler=boom)
    with pytest.raises(ValueError, match="more items than the count"):
        list(lockstep(iter([1, 2]), filler=boom, count=1))


def test_one_rank_all_gather_is_the_tensor_itself():
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
    (all_gather_with_grad(x) * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), 2.0))
    gathered = all_gather_detached(x)
    assert not gathered.requires_grad and torch.equal(gathered, x.detach())
    assert all_reduce_sum_with_grad(x) is x


# ZeRO-3 helpers (one rank, DeepSpeed's CPU accelerator).


@pytest.fixture
def zero_init():
    """A `deepspeed.zero.Init` context for fp32 parameters, the process group started (one rank)."""
    distributed.init_distributed()
    import deepspeed

    return lambda: deepspeed.zero.Init(config_dict_or_path=ZERO3)


def test_init_parameters_from_copies_into_partitioned_parameters(zero_init):
    with zero_init():
        src, dst = seeded_linear(1), seeded_linear(2)
    assert all(p.numel() == 0 for p in [*src.parameters(), *dst.parameters()])  # partitioned
    with gathered_parameters(src.parameters(), enabled=True):
        expected = {k: v.clone() for k, v in src.state_dict().items()}
        assert expected["weight"].shape == (EMBED, WIDTH)
    before = gathered_state_dict(dst, zero3=True)
    assert not torch.equal(before["weight"], expected["weight"])
    init_parameters_from(dst.parameters(), src.parameters(), zero3=True)
    after = gathered_state_dict(dst, zero3=True)
    assert after.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(after[name], value), name
    assert dst.weight.numel() == 0  # partitioned again


def test_gathered_parameters_keep_changes_only_with_a_modifier_rank(zero_init):
    with zero_init():
        layer = seeded_linear(3)
    original = gathered_state_dict(layer, zero3=True)["weight"]
    with gathered_parameters([layer.weight], enabled=True), torch.no_grad():
        layer.weight.zero_()
    assert torch.equal(gathered_state_dict(layer, zero3=True)["weight"], original)
    with gathered_parameters([layer.weight], enabled=True, modifier_rank=0), torch.no_grad():
        layer.weight.zero_()
    assert torch.count_nonzero(gathered_state_dict(layer, zero3=True)["weight"]) == 0


def test_init_parameters_from_plain_parameters_and_mismatches():
    src, dst = seeded_linear(4), seeded_linear(5)
    with gathered_parameters(dst.parameters(), enabled=False):  # a no-op without ZeRO-3
        init_parameters_from([dst.weight, dst.bias], [src.weight, src.bias], zero3=False)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)
    with pytest.raises(ValueError, match="shapes"):
        init_parameters_from([dst.weight], [src.bias], zero3=False)
    with pytest.raises(ValueError, match="1 destination and 2 source"):
        init_parameters_from([dst.weight], [src.weight, src.bias], zero3=False)


def test_gathered_state_dict_of_a_zero3_model_equals_the_plain_state_dict(zero_init, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    from arctic_core.engine.model import zero3_construction
    from arctic_core.testing import save_tiny_model

    folder = save_tiny_model(tmp_path / "tied", seed=3, tie_word_embeddings=True)
    plain = AutoModelForCausalLM.from_pretrained(folder)
    with zero3_construction(ZERO3):
        partitioned = AutoModelForCausalLM.from_pretrained(folder)
    assert all(p.numel() == 0 for p in partitioned.parameters())
    expected = plain.state_dict()
    for state in (gathered_state_dict(partitioned, zero3=True), gathered_state_dict(plain, zero3=False)):
        assert state.keys() == expected.keys()  # the tied head under its own name too
        for name, value in expected.items():
            assert torch.equal(state[name], value), name
    plain_state = gathered_state_dict(plain, zero3=False)
    assert plain_state["lm_head.weight"].data_ptr() != plain.lm_head.weight.data_ptr()  # copies, not views
    heads = gathered_state_dict(partitioned, zero3=True, keep=lambda name: name.startswith("lm_head"))
    assert list(heads) == ["lm_head.weight"] and torch.equal(
        heads["lm_head.weight"], expected["lm_head.weight"]
    )
