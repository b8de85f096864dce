"""The chunked losses of `arctic_core.losses` against the plain full-logits formulas, and their memory bound.

Each reference builds the whole fp32 logits with plain torch (h @ Wᵀ, the scale and soft-cap written
out here) and applies the textbook formula; the chunked loss must give the same value and the same
gradients wrt the hidden states and the head's weight. A dispatch mode counts the vocabulary-wide
tensors alive at once, so a loss that keeps every chunk (or the full logits) alive fails.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from arctic_core.losses import (
    causal_lm_loss,
    chunked_cross_entropy_sum,
    distillation_kl,
    distillation_kl_sum,
    sequence_log_probs,
    token_log_probs,
)
from arctic_core.testing import tiny_model

ROWS, HIDDEN, VOCAB = 23, 16, 50
CAPPED = SimpleNamespace(logit_scale=0.7, final_logit_softcapping=3.0)
PLAIN = SimpleNamespace()
CLOSE = {"atol": 1e-6, "rtol": 1e-5}  # fp32: sums over rows and vocab round at ~1e-6 relative


def head(seed: int, hidden: int = HIDDEN, bias: bool = False) -> torch.nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Linear(hidden, VOCAB, bias=bias)


def hidden_states(seed: int, rows: int = ROWS, hidden: int = HIDDEN) -> torch.Tensor:
    return torch.randn(rows, hidden, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def targets(seed: int, rows: int = ROWS) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows,), generator=torch.Generator().manual_seed(seed))


def plain_logits(layer: torch.nn.Linear, h: torch.Tensor, config: object = None) -> torch.Tensor:
    """Full fp32 logits, scale and soft-cap spelled out."""
    z = h.float() @ layer.weight.float().T
    if layer.bias is not None:
        z = z + layer.bias.float()
    scale = getattr(config, "logit_scale", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if scale is not None:
        z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return z


def plain_log_probs(layer: torch.nn.Linear, h: torch.Tensor, y: torch.Tensor, config: object) -> torch.Tensor:
    z = plain_logits(layer, h, config)
    return (z - torch.logsumexp(z, dim=-1, keepdim=True)).gather(1, y.unsqueeze(1)).squeeze(1)


def value_and_grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    for t in tensors:
        t.grad = None
    value = fn()
    value.backward()
    return value.detach(), [None if t.grad is None else t.grad.clone() for t in tensors]


def assert_same(got, expected) -> None:
    torch.testing.assert_close(got[0], expected[0], **CLOSE)
    for g, e in zip(got[1], expected[1]):
        assert (g is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(g, e, **CLOSE)


@pytest.mark.parametrize("config", [None, CAPPED], ids=["plain", "scaled-capped"])
@pytest.mark.parametrize("chunk_size", [5, ROWS, 4096])
@pytest.mark.parametrize("bias", [False, True])
def test_cross_entropy_sum_matches_the_full_logits_formula(config, chunk_size, bias):
    layer, h, y = head(0, bias=bias), hidden_states(1), targets(2)
    got = value_and_grads(
        lambda: chunked_cross_entropy_sum(layer, h, y, chunk_size=chunk_size, config=config), h, layer.weight
    )
    expected = value_and_grads(lambda: -plain_log_probs(layer, h, y, config).sum(), h, layer.weight)
    assert_same(got, expected)


@pytest.mark.parametrize("config", [None, CAPPED], ids=["plain", "scaled-capped"])
@pytest.mark.parametrize("chunk_size", [4, 4096])
def test_token_log_probs_match_the_full_logits_formula(config, chunk_size):
    layer, h, y = head(3), hidden_states(4), targets(5)
    weights = torch.linspace(-1, 2, ROWS)  # a gradient that differs per row
    got = value_and_grads(
        lambda: (token_log_probs(layer, h, y, chunk_size=chunk_size, config=config) * weights).sum(),
        h,
        layer.weight,
    )
    expected = value_and_grads(
        lambda: (plain_log_probs(layer, h, y, config) * weights).sum(), h, layer.weight
    )
    assert_same(got, expected)
    with torch.no_grad():
        torch.testing.assert_close(
            token_log_probs(layer, h, y, chunk_size=chunk_size, config=config),
            plain_log_probs(layer, h, y, config),
            **CLOSE,
        )


def plain_kl_sum(student_head, hs, teacher_head, ht, temperature, config, teacher_config) -> torch.Tensor:
    """T² · sum_i sum_v p_v (log p_v − log q_v), p the teacher's and q the student's softmax at T."""
    teacher = plain_logits(teacher_head, ht, teacher_config).detach() / temperature
    student = plain_logits(student_head, hs, config) / temperature
    log_p = teacher - torch.logsumexp(teacher, dim=-1, keepdim=True)
    log_q = student - torch.logsumexp(student, dim=-1, keepdim=True)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("chunk_size", [6, 4096])
@pytest.mark.parametrize(
    "configs",
    [(None, None), (CAPPED, None), (CAPPED, PLAIN)],
    ids=["plain", "capped-both", "capped-student-only"],
)
def test_distillation_kl_with_one_shared_head_matches_the_formula(temperature, chunk_size, configs):
    """SwiftKV's case: one model's head over its teacher and its student hidden states."""
    layer, hs, ht = head(6), hidden_states(7), hidden_states(8)
    config, teacher_config = configs
    options = {"temperature": temperature, "chunk_size": chunk_size, "config": config}
    got = value_and_grads(
        lambda: distillation_kl_sum(layer, hs, layer, ht, **options, teacher_config=teacher_config),
        hs,
        ht,
        layer.weight,
    )
    reference_teacher = config if teacher_config is None else teacher_config
    expected = value_and_grads(
        lambda: plain_kl_sum(layer, hs, layer, ht, temperature, config, reference_teacher),
        hs,
        ht,
        layer.weight,
    )
    assert got[1][1] is None  # no gradient reaches the teacher's hidden states
    assert_same(got, expected)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_distillation_kl_with_two_heads_matches_the_formula(temperature):
    student, teacher = head(9), head(10, hidden=24, bias=True)
    hs, ht = hidden_states(11), hidden_states(12, hidden=24)
    got = value_and_grads(
        lambda: distillation_kl_sum(student, hs, teacher, ht, temperature=temperature, chunk_size=7),
        hs,
        student.weight,
        teacher.weight,
    )
    expected = value_and_grads(
        lambda: plain_kl_sum(student, hs, teacher, ht, temperature, None, None),
        hs,
        student.weight,
        teacher.weight,
    )
    assert got[1][2] is None  # the teacher's head gets no gradient
    assert got[0] > 0
    assert_same(got, expected)


def test_distillation_kl_is_zero_against_itself_and_its_mean_divides_by_rows():
    layer, h = head(13), hidden_states(14)
    same = distillation_kl_sum(layer, h, layer, h.detach(), temperature=2.0, chunk_size=5)
    torch.testing.assert_close(same, torch.tensor(0.0), atol=1e-5, rtol=0)
    other = hidden_states(15)
    total = distillation_kl_sum(layer, h, layer, other, temperature=2.0, chunk_size=5)
    mean = distillation_kl(layer, h, layer, other, temperature=2.0, chunk_size=5)
    torch.testing.assert_close(mean, total / ROWS, **CLOSE)
    with pytest.raises(ValueError, match="rows"):
        distillation_kl_sum(layer, h, layer, other[:3])


def test_distillation_kl_without_rows_is_zero_with_a_graph():
    layer, h = head(16), hidden_states(17, rows=0)
    loss = distillation_kl(layer, h, layer, hidden_states(18, rows=0), temperature=2.0)
    loss.backward()
    assert loss.item() == 0.0 and h.grad is not None


class LiveLogits(TorchDispatchMode):
    """Tracks the elements of vocabulary-wide tensors (last dim = vocab) alive at once, and their peak."""

    def __init__(self, vocab: int, weight_shapes: tuple[tuple[int, ...], ...] = ()) -> None:
        super().__init__()
        self.vocab, self.weight_shapes = vocab, weight_shapes
        self.live = self.peak = 0
        self.tracked: set[int] = set()

    def _freed(self, count: int, key: int) -> None:
        self.live -= count
        self.tracked.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) in self.weight_shapes:
                continue
            if id(tensor) in self.tracked:  # an in-place op returns its input: the same memory
                continue
            if tensor.dim() and tensor.shape[-1] == self.vocab:
                self.live += tensor.numel()
                self.peak = max(self.peak, self.live)
                self.tracked.add(id(tensor))
                weakref.finalize(tensor, self._freed, tensor.numel(), id(tensor))
        return out


def test_distillation_kl_keeps_one_chunk_of_logits_alive():
    rows, chunk = 200, 10
    layer, hs, ht = head(19), hidden_states(20, rows=rows), hidden_states(21, rows=rows)
    with LiveLogits(VOCAB, weight_shapes=((HIDDEN, VOCAB),)) as seen:
        loss = distillation_kl_sum(layer, hs, layer, ht, temperature=2.0, chunk_size=chunk)
        alive_between = seen.live
        loss.backward()
    assert alive_between == 0  # nothing vocabulary-wide is kept from the forward pass
    assert seen.peak <= 10 * chunk * VOCAB < rows * VOCAB
    with LiveLogits(VOCAB, weight_shapes=((HIDDEN, VOCAB),)) as plain:
        loss = plain_kl_sum(layer, hs, layer, ht, 2.0, None, None)
        plain_alive = plain.live
    assert plain_alive >= rows * VOCAB  # the check sees full logits when they exist


# Causal LMs: the root forward, the label shift, and the trainable-token selection.


def make_batch(rows: int = 3, length: int = 40, vocab: int = 1024, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab - 4, (rows, length), generator=generator)
    labels = input_ids.clone()
    labels[:, :10] = -100  # a prompt
    labels[1, 25:] = -100  # padding at the end of row 1
    labels[:, 0] = -100
    return {"input_ids": input_ids, "labels": labels, "position_ids": torch.arange(length).expand(rows, -1)}


def full_log_probs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(label) `[B, L-1]` from the model's full logits (0 where the label is -100), transform applied."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    z = logits[:, :-1].float()
    scale = getattr(model.config, "logit_scale", None)
    cap = getattr(model.config, "final_logit_softcapping", None)
    z = z * scale if scale is not None else z
    z = cap * torch.tanh(z / cap) if cap is not None else z
    target = batch["labels"][:, 1:]
    picked = torch.log_softmax(z, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (target != -100)


def model_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_model_grads(model: torch.nn.Module, run, reference) -> None:
    model.zero_grad()
    expected = reference()
    expected.backward()
    expected_grads = model_grads(model)
    model.zero_grad()
    got = run()
    got.backward()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert model_grads(model).keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(model_grads(model)[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 4096])
def test_causal_lm_loss_gives_the_plain_loss_and_gradients(tied, chunk_size):
    model = tiny_model("llama", seed=1, tie_word_embeddings=tied)
    batch = make_batch()
    count = (batch["labels"][:, 1:] != -100).sum()
    assert_same_model_grads(
        model,
        lambda: causal_lm_loss(model, batch, chunk_size=chunk_size),
        lambda: -full_log_probs(model, batch).sum() / count,
    )


def test_causal_lm_loss_applies_logit_scale_and_soft_capping():
    model = tiny_model("llama", seed=4, logit_scale=0.5, final_logit_softcapping=2.0)
    batch = make_batch(seed=5)
    count = (batch["labels"][:, 1:] != -100).sum()
    plain = -full_log_probs(tiny_model("llama", seed=4), batch).sum() / count
    capped = -full_log_probs(model, batch).sum() / count
    assert not torch.allclose(plain, capped)  # the transform matters at these values
    assert_same_model_grads(model, lambda: causal_lm_loss(model, batch, chunk_size=9), lambda: capped)


def test_causal_lm_loss_matches_the_models_own_loss():
    model = tiny_model("qwen2", seed=2)
    batch = make_batch(seed=3)
    own = model(**batch, use_cache=False).loss
    torch.testing.assert_close(causal_lm_loss(model, batch), own, atol=1e-6, rtol=0)


def test_causal_lm_loss_never_materialises_full_logits():
    model = tiny_model("llama", seed=0)
    batch = make_batch(rows=4, length=64)
    vocab, weight = model.config.vocab_size, (model.config.hidden_size, model.config.vocab_size)
    chunk = 16
    with LiveLogits(vocab, weight_shapes=(weight,)) as seen:
        loss = causal_lm_loss(model, batch, chunk_size=chunk)
        alive_between = seen.live
        loss.backward()
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert alive_between <= 4 * vocab  # the root forward's logits_to_keep=1 logits, one row per sample
    assert seen.peak <= 10 * chunk * vocab < trained * vocab


def test_causal_lm_loss_without_trainable_tokens_is_zero_with_a_graph():
    model = tiny_model("llama", seed=0)
    batch = make_batch()
    batch["labels"][:] = -100
    loss = causal_lm_loss(model, batch)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_sequence_log_probs_sum_the_answer_tokens_only(chunk_size):
    model = tiny_model("llama", seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (4, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[1, 9:] = -100  # padding
    labels[3, :] = -100  # nothing to score
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(12).expand(4, -1)}
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    keep = labels[:, 1:] != -100
    assert_same_model_grads(
        model,
        lambda: (sequence_log_probs(model, batch, chunk_size=chunk_size)[0] * weights).sum(),
        lambda: (full_log_probs(model, batch).sum(dim=1) * weights).sum(),
    )
    with torch.no_grad():
        sums, counts = sequence_log_probs(model, batch, chunk_size=chunk_size)
    torch.testing.assert_close(sums, full_log_probs(model, batch).sum(dim=1).detach(), **CLOSE)
    assert counts.tolist() == keep.sum(dim=1).tolist() and counts[3] == 0 and sums[3] == 0


# ZeRO-3: the head partitioned (DeepSpeed's CPU accelerator), called inside the checkpointed chunks.

ZERO3 = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},  # nothing stays gathered
    "optimizer": {"type": "SGD", "params": {"lr": 0.0}},
    "zero_allow_untested_optimizer": True,
}


class StudentAndHead(torch.nn.Module):
    """A trainable projection (the student's last layer) and an output layer, as one ZeRO-3 model."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(HIDDEN, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def zero3_kl_step(frozen: bool, rows: int, seed: int = 30) -> dict[str, torch.Tensor]:
    """One ZeRO-3 step of `distillation_kl` (chunks of 4 rows); the loss, d loss/d h_s and the whole head."""
    import deepspeed

    from arctic_core.gather import gathered_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with deepspeed.zero.Init(config_dict_or_path=ZERO3):
            model = StudentAndHead()
    assert model.head.weight.ds_tensor.numel() < VOCAB * HIDDEN or torch.distributed.get_world_size() == 1
    model.head.requires_grad_(not frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ZERO3)
    rank = torch.distributed.get_rank()
    x, ht = hidden_states(seed + 1 + rank, rows=rows), hidden_states(seed + 3 + rank, rows=rows)
    hs = engine(x.detach())
    hs.retain_grad()
    loss = distillation_kl(engine.module.head, hs, engine.module.head, ht, temperature=2.0, chunk_size=4)
    engine.backward(loss)
    weight = gathered_state_dict(engine.module.head, zero3=True).get("weight")
    return {"loss": loss.detach(), "hs": hs.detach(), "ht": ht, "grad": hs.grad, "weight": weight}


def assert_matches_plain_kl(result: dict[str, torch.Tensor], weight: torch.Tensor) -> None:
    layer = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    layer.weight.data.copy_(weight)
    hs = result["hs"].clone().requires_grad_()
    rows = max(hs.shape[0], 1)
    expected = plain_kl_sum(layer, hs, layer, result["ht"], 2.0, None, None) / rows
    expected.backward()
    torch.testing.assert_close(result["loss"], expected.detach(), **CLOSE)
    if hs.shape[0]:
        torch.testing.assert_close(result["grad"], hs.grad, **CLOSE)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trainable-head"])
def test_distillation_kl_with_a_zero3_partitioned_head(frozen):
    """A frozen partitioned head used to fail the recompute ('recomputed values have different metadata')."""
    from arctic_core.engine import distributed

    distributed.init_distributed()
    result = zero3_kl_step(frozen, rows=ROWS)
    assert_matches_plain_kl(result, result["weight"])


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trainable-head"])
def test_fused_cross_entropy_with_a_zero3_partitioned_head(frozen):
    """Frozen: the weight gathered once; trainable: the fused loss as the head's own call (ZeRO-3's hooks)."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from arctic_core.engine import distributed
    from arctic_core.gather import gathered_state_dict

    distributed.init_distributed()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(40)
        with deepspeed.zero.Init(config_dict_or_path=ZERO3):
            model = StudentAndHead()
    model.head.requires_grad_(not frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ZERO3)
    head_module = engine.module.head
    assert head_module.weight.numel() == 0  # partitioned, released outside forwards
    hs = engine(hidden_states(41).detach())
    hs.retain_grad()
    y = targets(42)
    loss = chunked_cross_entropy_sum(head_module, hs, y, chunk_size=4)
    fused = [loss.grad_fn, *[f for f, _ in loss.grad_fn.next_functions if f is not None]]  # ZeRO-3 wraps it
    assert any(type(f).__name__ == "_FusedLinearCrossEntropyBackward" for f in fused)
    engine.backward(loss)
    weight_grad = None if frozen else safe_get_full_grad(head_module.weight)
    layer = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    layer.weight.data.copy_(gathered_state_dict(head_module, zero3=True)["weight"])
    h = hs.detach().clone().requires_grad_()
    expected = -plain_log_probs(layer, h, y, None).sum()
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), **CLOSE)
    torch.testing.assert_close(hs.grad, h.grad, **CLOSE)
    if not frozen:
        torch.testing.assert_close(weight_grad, layer.weight.grad, **CLOSE)


def zero3_rank_main(rank: int, port: int, out: str) -> None:
    """One spawned rank: 13 rows on rank 0; rank 1 has 0 rows, then 5 (4 chunks against 0, then 2)."""
    from arctic_core.testing import finish_spawned_rank, start_spawned_rank

    start_spawned_rank(rank, 2, port)
    results = {
        (frozen, other): zero3_kl_step(frozen, rows=13 if rank == 0 else other)
        for frozen in (True, False)
        for other in (0, 5)
    }
    torch.save(results, f"{out}.{rank}")
    finish_spawned_rank()


@pytest.mark.distributed
@pytest.mark.slow
def test_distillation_kl_on_two_zero3_ranks_with_uneven_chunk_counts(tmp_path, monkeypatch):
    """Each call of a partitioned head is a collective: without one agreed chunk count, gloo aborts."""
    from arctic_core.engine import distributed

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = str(tmp_path / "rank")
    torch.multiprocessing.spawn(zero3_rank_main, args=(distributed.free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for key, first in ranks[0].items():
        assert first["hs"].shape[0] == 13 and ranks[1][key]["hs"].shape[0] == key[1]
        for result in (first, ranks[1][key]):
            assert_matches_plain_kl(result, first["weight"])
