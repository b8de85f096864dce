"""Run by `test_alst_sequence_parallel.py` on two CPU ranks (torchrun, gloo): sp=2 against sp=1.

For every case, each rank computes the reference (sp=1: the whole micro-batch through an
unchanged copy of the model, with transformers' own attention) and the sequence-parallel
result (its slice through the Ulysses attention), weighted as core's loop weights them:

    reference: loss = sum_i n_i l_i / N over the batch,        gradients of it
    SP:        loss = sum over ranks of n_r l_r / N,           gradients summed over ranks

and rank 0 writes the largest differences (loss, every parameter's gradient) to a JSON file.
Cases: sdpa and eager; unpacked (right-padded rows, attention mask) and packed (position resets);
4 KV heads (split) and 1 KV head (replicated); the SFT loss (core's chunked cross-entropy) and
SwiftKV's distillation loss; tiled MLP and activation offload switched on under SP.

DPO (`compare_dpo`) runs through two real `DPOTrainer`s (sequence_parallel_size 1 and 2: their
topology, process groups, `prepare_batch`, `micro_batch_weight`, `loss`) on one micro-batch of
pairs (unpacked rows: DPO never packs), a live frozen reference, sigmoid and IPO losses; the
loop's weighting is applied as core applies it (weight n = pairs on every rank, N = their sum over
all ranks), so loss, metrics (weighted over ranks) and summed gradients must match sp=1.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from typing import Any

import torch
import torch.distributed as dist

from arctic_alst import ulysses
from arctic_alst.offload import offload_checkpoints
from arctic_alst.sharding import shard_batch
from arctic_alst.tiling import tile_mlps
from arctic_core import losses
from arctic_core.testing import tiny_model

RANK_COUNT = 2


def batches(vocab: int) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :3] = -100  # a prompt
    labels[mask == 0] = -100
    positions = torch.arange(13).expand(2, 13).clone()
    unpacked = {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}
    lengths = [5, 6, 4]  # three samples, then 2 positions of padding
    ids = torch.randint(3, vocab, (1, 17), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths] + [torch.arange(4, 6)])[None]
    labels = ids.clone()
    starts = [0, 5, 11]
    labels[0, starts] = -100
    labels[0, [6, 7]] = -100
    labels[0, 15:] = -100
    packed = {"input_ids": ids, "labels": labels, "position_ids": positions}
    out = {}
    for name, batch in (("unpacked", unpacked), ("packed", packed)):
        batch["num_trainable_tokens"] = (batch["labels"] != -100).sum()
        batch["num_tokens"] = (
            batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        )
        out[name] = batch
    return out


def sft_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    return losses.causal_lm_loss(model, batch, chunk_size=7)


def swiftkv_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    from arctic_core.engine.loop import model_inputs
    from arctic_swiftkv.loss import distillation_loss
    from arctic_swiftkv.trainer import swiftkv_off

    def states() -> tuple[torch.Tensor, ...]:
        out = model(**model_inputs(batch), use_cache=False, logits_to_keep=1, output_hidden_states=True)
        return tuple(out.hidden_states)

    with torch.no_grad(), swiftkv_off(model):
        teacher = states()
    student = states()
    result = distillation_loss(
        model.get_output_embeddings(),
        student,
        teacher,
        batch["labels"],
        temperature=2.0,
        hidden_loss_mult=1.0,
        hidden_loss_layer=-1,
        chunk_size=5,
        config=model.config,
    )
    return result.loss


def build(kind: str, attn: str, kv: int) -> Any:
    if kind == "sft":
        return tiny_model(
            "llama", seed=3, attn_implementation=attn, num_attention_heads=4, num_key_value_heads=kv
        )
    import arctic_swiftkv.models  # noqa: F401

    sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/swiftkv/tests")
    from swiftkv_support import swiftkv_pair

    _, model = swiftkv_pair(layers=4, n_kv=2, attn=attn, seed=3)
    return model.swiftkv(True)


def grads(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compare(kind: str, attn: str, kv: int, layout: str, extras: bool) -> dict[str, float]:
    reference = build(kind, attn, kv).train()
    model = copy.deepcopy(reference)
    if extras:  # tiled MLP and activation-checkpoint offload, under SP
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        tile_mlps(model)
        offload_checkpoints(model)
    loss_fn = sft_loss if kind == "sft" else swiftkv_loss
    batch = batches(reference.config.vocab_size)[layout]
    total = float(batch["num_trainable_tokens"])

    ulysses.enable(
        model, dist.group.WORLD, RANK_COUNT
    )  # the SP model only: the reference keeps its attention
    ref_loss = loss_fn(reference, batch) * float(batch["num_trainable_tokens"]) / total
    ref_loss.backward()
    part = shard_batch(batch, RANK_COUNT, dist.get_rank())
    weight = float(part["num_trainable_tokens"])
    loss = loss_fn(model, part) * (weight / total)
    loss.backward()
    summed = loss.detach().clone()
    dist.all_reduce(summed)
    counts = torch.tensor([weight, float(part["num_tokens"])])
    dist.all_reduce(counts)
    got = grads(model)
    worst = 0.0
    for name, expected in grads(reference).items():
        dist.all_reduce(got[name])
        worst = max(worst, float((got[name] - expected).abs().max()))
    return {
        "loss": float(ref_loss),
        "loss_diff": abs(float(summed) - float(ref_loss)),
        "grad_diff": worst,
        "weight_sum": float(counts[0]) - total,
        "tokens_sum": float(counts[1]) - float(batch["num_tokens"]),
        "grads": len(got),
    }


def control() -> dict[str, float]:
    """What the comparison reports when packed samples attend to each other (DeepSpeed's sdpa path):
    the reference is given an all-ones mask, so transformers lets the samples see each other."""
    reference = build("sft", "sdpa", 4).train()
    model = copy.deepcopy(reference)
    batch = batches(reference.config.vocab_size)["packed"]
    leaky = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    sft_loss(reference, leaky).backward()
    ulysses.enable(model, dist.group.WORLD, RANK_COUNT)
    part = shard_batch(batch, RANK_COUNT, dist.get_rank())
    (
        sft_loss(model, part) * float(part["num_trainable_tokens"]) / float(batch["num_trainable_tokens"])
    ).backward()
    got, worst = grads(model), 0.0
    for name, expected in grads(reference).items():
        dist.all_reduce(got[name])
        worst = max(worst, float((got[name] - expected).abs().max()))
    return {"grad_diff": worst}


def dpo_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two pairs as the DPO collate lays them out: [chosen rows; rejected rows], right-padded."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, vocab, (4, 13), generator=g)
    lengths, prompts = [13, 10, 8, 12], [4, 3, 4, 3]
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (n, p) in enumerate(zip(lengths, prompts)):
        mask[row, :n] = 1
        labels[row, p:n] = ids[row, p:n]
    ids[mask == 0] = 0
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": torch.arange(13).expand(4, 13).clone(),
        "attention_mask": mask,
        "num_pairs": torch.tensor(2),
        "num_tokens": mask.sum(),
        "num_trainable_tokens": (labels != -100).sum(),
    }


def dpo_trainer(folder: str, sp: int, loss_type: str, attn: str) -> Any:
    from arctic_core.engine import setup
    from arctic_core.recipe import load_recipe
    from arctic_core.testing import preference_rows, save_tiny_model, write_rows

    model_dir = save_tiny_model(f"{folder}/model", "llama", seed=3)
    pairs = write_rows(f"{folder}/pairs.jsonl", preference_rows(4))
    recipe = {
        "type": "dpo",
        "sequence_parallel_size": sp,
        "loss_type": loss_type,
        "beta": 0.5,
        "loss_chunk_size": 5,
        "model": {"name_or_path": str(model_dir), "dtype": "fp32", "attn_implementation": attn},
        "data": {"sources": [str(pairs)]},
        "tiled_mlp_compute": sp > 1,  # the feature's own transform: MLPs tiled in place
    }
    loaded = load_recipe(None, data=recipe)
    trainer = loaded.trainer_class()(loaded.config)
    setup.distributed(trainer)  # the features' checks, the topology and its process groups
    return trainer


def compare_dpo(folder: str, attn: str, kv: int, loss_type: str) -> dict[str, float]:
    from arctic_core.engine.frozen import FrozenModel

    policy = tiny_model(
        "llama", seed=3, attn_implementation=attn, num_attention_heads=4, num_key_value_heads=kv
    )
    policy.train()
    frozen = tiny_model(
        "llama", seed=5, attn_implementation=attn, num_attention_heads=4, num_key_value_heads=kv
    )
    frozen.eval().requires_grad_(False)
    whole, sharded = dpo_trainer(folder, 1, loss_type, attn), dpo_trainer(folder, 2, loss_type, attn)
    assert sharded.topology.sequence_parallel_size == 2 and whole.topology.sequence_parallel_size == 1
    batch = dpo_batch(policy.config.vocab_size)

    whole.model = whole.engine = policy
    whole.reference = FrozenModel(frozen)
    expected = whole.loss(whole.prepare_batch(batch))
    expected.loss.backward()

    model = copy.deepcopy(policy)
    model.zero_grad(set_to_none=True)
    sharded_frozen = copy.deepcopy(frozen)
    sharded.log = logging.getLogger("alst_sp_worker")  # setup_logging's logger, which this trainer skips
    sharded.model = sharded.engine = sharded.features.transform_model(sharded, model)
    # the alst feature's own hook, as `build_frozen_model` calls it: the reference reads slices too
    sharded.reference = FrozenModel(sharded.features.transform_frozen(sharded, sharded_frozen))
    assert model.config._attn_implementation == sharded_frozen.config._attn_implementation == ulysses.NAME
    assert policy.config._attn_implementation == frozen.config._attn_implementation == attn
    part = sharded.prepare_batch(batch)
    assert part["input_ids"].shape[1] == 8  # this rank's slice: 7 positions and the placeholder
    weight = sharded.micro_batch_weight(part)
    total = torch.tensor([weight])
    dist.all_reduce(total)  # the loop's N: every rank's weight
    out = sharded.loss(part)
    (out.loss * (weight / float(total))).backward()
    step_loss = torch.tensor([float(out.loss) * weight / float(total), float(part["num_tokens"])])
    dist.all_reduce(step_loss)
    metric_diff = 0.0
    for name, value in expected.metrics.items():
        mean = torch.tensor([out.metrics[name] * weight / float(total)], dtype=torch.float64)
        dist.all_reduce(mean)  # the loop's weighted mean over ranks
        metric_diff = max(metric_diff, abs(float(mean) - value))
    got = grads(model)
    worst = 0.0
    for name, grad in grads(policy).items():
        dist.all_reduce(got[name])
        worst = max(worst, float((got[name] - grad).abs().max()))
    return {
        "loss": float(expected.loss),
        "loss_diff": abs(float(step_loss[0]) - float(expected.loss)),
        "grad_diff": worst,
        "metric_diff": metric_diff,
        "metrics": len(expected.metrics),
        "weight_sum": float(total) - 2 * float(batch["num_pairs"]),  # each rank counts the pairs
        "tokens_sum": float(step_loss[1]) - float(batch["num_tokens"]),
        "grads": len(got),
    }


TRANSFORMERS_MODULES = (
    "transformers.modeling_utils",
    "transformers.modeling_layers",
    "transformers.masking_utils",
    "transformers.integrations.sdpa_attention",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
)


def process_state() -> dict[str, Any]:
    """What a run must leave as it found it: transformers' attention and mask registries, the
    attributes of its modules and of their classes, and a plain model's logits."""
    import importlib
    import inspect

    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

    plain = tiny_model("llama", seed=11, attn_implementation="sdpa")
    packed = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        logits = plain(input_ids=torch.arange(3, 15)[None], position_ids=packed, use_cache=False).logits
    state: dict[str, Any] = {
        "attention": dict(ALL_ATTENTION_FUNCTIONS.items()),
        "masks": dict(ALL_MASK_ATTENTION_FUNCTIONS.items()),
        "logits": logits,
    }
    for name in TRANSFORMERS_MODULES:
        module = importlib.import_module(name)
        state[name] = {k: v for k, v in vars(module).items() if k != "__warningregistry__"}  # Python's own
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name:
                if issubclass(
                    cls, PreTrainedModel
                ):  # transformers' own memos of a source check: filled first
                    cls._can_set_attn_implementation(), cls._can_set_experts_implementation()
                state[f"{name}.{cls_name}"] = dict(vars(cls))
    return state


def left_unchanged(before: dict[str, Any]) -> list[str]:
    """What differs from `before` now (Arctic's own registered names aside), plus a fresh plain model's
    attention and MLP: the stock implementation, no instance attribute or hook added."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaMLP

    after, changed = process_state(), []
    for key, old in before.items():
        new = after[key]
        if key == "logits":
            changed += [] if torch.equal(old, new) else ["a plain model's logits"]
            continue
        added = {k for k in new.keys() - old.keys() if not (key == "attention" and k.startswith("arctic_"))}
        changed += [f"{key}: {k} added" for k in sorted(added)]
        changed += [f"{key}: {k}" for k in old if k not in new or new[k] is not old[k]]
    plain = tiny_model("llama", seed=11, attn_implementation="sdpa")
    layer = plain.model.layers[0]
    if (
        plain.config._attn_implementation != "sdpa"
        or ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa_attention_forward
    ):
        changed.append("a plain model's attention function")
    if type(layer.mlp) is not LlamaMLP or "forward" in vars(layer.mlp) or "forward" in vars(layer.self_attn):
        changed.append("a plain model's MLP or attention module")
    if any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules()):
        changed.append("hooks on a plain model")
    return changed


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    before = process_state()
    results: dict[str, Any] = {}
    cases = [
        ("sft", "sdpa", 4, "unpacked", False),
        ("sft", "sdpa", 4, "packed", False),
        ("sft", "eager", 1, "unpacked", False),
        ("sft", "eager", 1, "packed", False),
        ("sft", "sdpa", 1, "packed", True),
        ("swiftkv", "sdpa", 2, "packed", False),
        ("swiftkv", "eager", 2, "unpacked", False),
    ]
    for case in cases:
        results["-".join(map(str, case))] = compare(*case)
    folder = f"{out_path}.rank{dist.get_rank()}"
    for attn, kv, loss_type in (("sdpa", 4, "sigmoid"), ("eager", 1, "ipo")):
        results[f"dpo-{attn}-{kv}-unpacked-{loss_type}"] = compare_dpo(folder, attn, kv, loss_type)
    results["control"] = control()
    everywhere: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everywhere, left_unchanged(before))
    results["left_changed"] = sorted({item for found in everywhere for item in found})
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
