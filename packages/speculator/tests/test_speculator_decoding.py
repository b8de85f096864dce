"""Speculative decoding on the trained tiny base: exactly plain greedy's output, and real acceptance."""

from __future__ import annotations

import pytest
import torch

from arctic_speculator.decode import (
    decode_report,
    greedy_decode,
    speculative_decode,
    teacher_forced_acceptance,
)
from arctic_speculator.evaluate import eval_prompts
from arctic_speculator.export import load_speculator
from arctic_speculator.generate import load_base_model, stop_tokens


@pytest.fixture(scope="module")
def base(trained):
    from arctic_core.data.tokenizer import load_tokenizer

    model = load_base_model(trained.config)
    tokenizer = load_tokenizer(trained.config)
    prompts = eval_prompts(trained.config, tokenizer, trained.root / "scratch")  # heldout.jsonl, 32 prompts
    return model, prompts, stop_tokens(model, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_speculative_output_is_plain_greedy_token_for_token(trained, base, kind):
    model, prompts, stops = base
    speculator = load_speculator(getattr(trained, kind), base=model)
    accepted = 0
    for prompt in prompts[:8]:
        spec = speculative_decode(model, speculator, prompt, 24, stops)
        plain = greedy_decode(model, prompt, 24, stops)
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=stops[0],
            )[0, len(prompt) :].tolist()
        assert spec.tokens == plain.tokens == hf, (prompt, spec.tokens, plain.tokens, hf)
        assert spec.forwards < len(spec.tokens) or len(spec.tokens) <= 1
        accepted += sum(spec.accepted)
    assert accepted > 0  # drafts were accepted, so verification and cache roll-back really ran
    # without an end token the loop must stop at the limit, also mid-round
    long = speculative_decode(model, speculator, prompts[0], 7)
    assert long.tokens == greedy_decode(model, prompts[0], 7).tokens and len(long.tokens) == 7


@pytest.mark.slow
def test_three_trained_heads_reach_a_mean_accepted_length_of_two_on_heldout_prompts(trained, base):
    model, prompts, stops = base
    speculator = load_speculator(trained.mlp, base=model)
    plain = [greedy_decode(model, p, 24, stops) for p in prompts]
    spec = [speculative_decode(model, speculator, p, 24, stops) for p in prompts]
    report = decode_report(plain, spec)
    assert report["identical"]
    assert report["mean_accepted_length"] >= 2.0, report
    assert report["tokens_per_base_forward"] > 1.8 * report["plain_tokens_per_base_forward"]
    forced = teacher_forced_acceptance(model, speculator, [(p, d.tokens) for p, d in zip(prompts, plain)])
    p = forced["acceptance"]
    assert forced["tau"] == pytest.approx(p[0] + p[0] * p[1] + p[0] * p[1] * p[2], rel=1e-5)
    assert forced["acceptance"][0] == pytest.approx(forced["accuracy"][0])
    assert forced["tau"] > 1.0
