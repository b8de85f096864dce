"""SwiftKV prefill against its teacher: time to first token, FLOPs the shapes predict, KV-cache bytes; one run.

One ~30-layer narrow Llama (32 layers, hidden 256, GQA 8/2 heads, random weights built from a config)
is turned into its SwiftKV variant at L_kv = L/2 and L/4; the teacher is the same model with SwiftKV
off (every layer runs). Time to first token = one prefill forward with a KV cache and
`logits_to_keep=1` (what `generate()` does first), median of `--repeats` (interleaved across models) after one warm-up, fp32, batch 1,
in this process, one configuration after another at each prompt length. The predicted ratio counts
the matmul FLOPs of the shapes (projections, MLP, causal attention scores and values): the teacher's
L layers over n tokens against L_kv layers, one K/V projection of h' per AcrossKV group for the
skipped layers, and the last token through the rest. KV-cache bytes are measured on the cache the
prefill leaves (teacher, and SwiftKV at L_kv = L/2 with AcrossKV G = 1, 2, 4).

    uv run python bench/swiftkv/bench_swiftkv.py            # default: 256, 1024, 2048 tokens (~2 min here)
    uv run python bench/swiftkv/bench_swiftkv.py --full     # 256, 512, 1024, 2048, 4096
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import torch

LAYERS = 32
SHAPE = {
    "num_hidden_layers": LAYERS,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 8192,
}
DEFAULT_LENGTHS = (256, 1024, 2048)
FULL_LENGTHS = (256, 512, 1024, 2048, 4096)


def build(n_kv: int, group: int) -> Any:
    """The SwiftKV model (random weights, seed 0: the same teacher weights for every L_kv and G)."""
    from transformers import LlamaConfig

    import arctic_swiftkv.models  # noqa: F401  (registers the SwiftKV classes)
    from arctic_swiftkv.configuration import to_swiftkv_config
    from arctic_swiftkv.init import initialise_swiftkv
    from arctic_swiftkv.modeling import LlamaSwiftKVForCausalLM

    config = to_swiftkv_config(LlamaConfig(**SHAPE, attn_implementation="sdpa"), n_kv, group)
    torch.manual_seed(0)
    model = LlamaSwiftKVForCausalLM(config)
    initialise_swiftkv(model, zero3=False)
    return model.swiftkv(True).eval()


def layer_flops(n: int, keys: int, d: int, kv: int, ffn: int, last_only: bool = False) -> float:
    """Matmul FLOPs of one decoder layer for n queries over `keys` keys (projections of the queries' rows)."""
    rows = 1 if last_only else n
    projections = 2 * rows * (2 * d * d + (0 if last_only else 2 * d * kv))
    mlp = 2 * rows * 3 * d * ffn
    attention = 2 * 2 * d * (keys if last_only else n * (n + 1) / 2)  # QK^T and AV, causal
    return projections + mlp + attention


def predicted_ratio(n: int, n_kv: int, group: int) -> float:
    d, kv, ffn = SHAPE["hidden_size"], SHAPE["hidden_size"] // 4, SHAPE["intermediate_size"]
    teacher = LAYERS * layer_flops(n, n, d, kv, ffn)
    rest = LAYERS - n_kv
    swift = n_kv * layer_flops(n, n, d, kv, ffn)
    swift += (rest // group) * 2 * n * 2 * d * kv  # K and V of h' for each group's cache
    swift += rest * layer_flops(n, n, d, kv, ffn, last_only=True)
    return teacher / swift


@torch.no_grad()
def prefill(model: Any, ids: torch.Tensor) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """The cache's filled key and value tensors (a layer a SwiftKV group does not own stays empty)."""
    tensors = [
        t for layer in cache.layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
    ]
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.numel()]


def cache_bytes(cache: Any) -> int:
    return sum(t.numel() * t.element_size() for t in cache_tensors(cache))


def ttft(models: dict[str, Any], ids: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median prefill seconds of each model; repeats interleaved, so load from other processes hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        prefill(model, ids)  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            prefill(model, ids)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="every prompt length, 256 to 4096")
    parser.add_argument("--lengths", type=int, nargs="*", help="prompt lengths (overrides --full)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = args.lengths or (FULL_LENGTHS if args.full else DEFAULT_LENGTHS)
    half, quarter = LAYERS // 2, LAYERS // 4
    models = {"teacher": build(half, 1).swiftkv(False), "half": build(half, 1), "quarter": build(quarter, 1)}
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, fp32"
    )
    print(
        f"# Llama {LAYERS} layers, hidden {SHAPE['hidden_size']}, GQA 8/2, sdpa; batch 1; median of {args.repeats}"
    )
    print()
    print(
        f"| prompt | teacher s | L_kv={half} s | speed-up | predicted | L_kv={quarter} s | speed-up | predicted |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in lengths:
        ids = torch.randint(3, SHAPE["vocab_size"], (1, n), generator=torch.Generator().manual_seed(n))
        t = ttft(models, ids, args.repeats)
        print(
            f"| {n} | {t['teacher']:.3f} | {t['half']:.3f} | {t['teacher'] / t['half']:.2f}x | "
            f"{predicted_ratio(n, half, 1):.2f}x | {t['quarter']:.3f} | {t['teacher'] / t['quarter']:.2f}x | "
            f"{predicted_ratio(n, quarter, 1):.2f}x |",
            flush=True,
        )
    n = max(lengths)
    ids = torch.randint(3, SHAPE["vocab_size"], (1, n), generator=torch.Generator().manual_seed(0))
    teacher_bytes = cache_bytes(prefill(models["teacher"], ids))
    print()
    print(f"| KV cache after a {n}-token prefill (fp32) | cache layers | MiB | vs teacher |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| teacher | {LAYERS} | {teacher_bytes / 2**20:.1f} | 1.00 |")
    for group in (1, 2, 4):
        model = models["half"] if group == 1 else build(half, group)
        cache = prefill(model, ids)
        used = len(cache_tensors(cache)) // 2
        size = cache_bytes(cache)
        print(
            f"| SwiftKV L_kv={half}, G={group} | {used} | {size / 2**20:.1f} | {size / teacher_bytes:.3f} |"
        )


if __name__ == "__main__":
    main()
