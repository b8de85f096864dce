"""`arctic_core.gather`: the differentiable all-gather on two real CPU ranks (gloo), and the ZeRO-3 helpers.

The all-gather is proven the way a contrastive trainer uses it: a global batch of (query, document)
pairs is split unevenly over 2 spawned ranks; each rank encodes its half with the same linear
encoder, gathers every rank's document embeddings, and backpropagates w_r times its InfoNCE loss
(mean over its q_r local queries against all Q documents; w_r = q_r/Q). The encoder gradients,
summed over ranks, must equal the gradient of the one-rank loss on the whole global batch. The
same two ranks copy parameters partitioned over both of them (`init_parameters_from`, ZeRO-3), and
sum partial scores with `all_reduce_sum_with_grad` the way DPO does under sequence parallelism (each
rank a slice of every sequence, the same loss and weight on both): summed gradients = one rank's.
The other ZeRO-3 tests run on one rank with DeepSpeed's CPU accelerator, on parameters built under
`deepspeed.zero.Init` (partitioned: empty until gathered).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arctic_core.engine import distributed
from arctic_core.gather import (
    all_gather_detached,
    all_gather_with_grad,
    all_reduce_sum_with_grad,
    gathered_parameters,
    gathered_state_dict,
    init_parameters_from,
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


def rank_main(rank: int, port: int, out: str) -> None:
    """One spawned rank: every scenario, a detached gather, the ZeRO-3 copy; rank 0 saves the results."""
    start_spawned_rank(rank, 2, port)
    results: dict[object, object] = {sizes: rank_scenario(rank, sizes) for sizes in SPLITS}
    ids = torch.arange(rank * 10, rank * 10 + 2 + rank).unsqueeze(1).expand(-1, 3)  # 2 and 3 rows
    results["detached"] = all_gather_detached(ids.float().requires_grad_())
    results["zero3"] = rank_zero3()
    results["summed"] = summed_scores_grads(rank)
    if rank == 0:
        torch.save(results, out)
    finish_spawned_rank()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_all_gather_gives_the_one_rank_gradient_and_zero3_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(rank_main, args=(distributed.free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out)
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
