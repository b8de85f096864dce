"""`arctic_packed_sdpa`: packed samples attended one at a time, everything else exactly sdpa."""

from __future__ import annotations

import copy

import pytest
import torch

from arctic_core.engine import packed_attention


def tiny(model_type: str = "llama", **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **{"attn_implementation": "sdpa", **extra},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def pair():
    """A model with `arctic_packed_sdpa` and an identical one left on sdpa (its own config object)."""
    plain = tiny()
    packed = copy.deepcopy(plain)
    assert packed_attention.enable(packed) is None
    return packed, plain


def packed_batch():
    """Two rows as the collate builds them: samples restart at 0; the short row's padding continues counting."""
    torch.manual_seed(1)
    lengths = [[5, 7, 3, 9], [11, 6]]
    width = 24
    ids, positions = [], []
    for row in lengths:
        pos = torch.cat([torch.arange(n) for n in row])
        pad = width - len(pos)
        positions.append(torch.cat([pos, pos[-1] + 1 + torch.arange(pad)]))
        ids.append(torch.randint(0, 64, (width,)))
    return torch.stack(ids), torch.stack(positions), lengths


def test_packed_rows_equal_each_sample_alone_and_transformers_block_mask(pair, monkeypatch):
    packed, plain = pair
    ids, positions, lengths = packed_batch()
    assert packed.config._attn_implementation == packed_attention.NAME
    assert plain.config._attn_implementation == "sdpa", "only the enabled model changes"
    attended, masks = [], []
    segmented, masked = packed_attention.attend_segments, packed_attention.packed_sdpa_mask
    monkeypatch.setattr(
        packed_attention, "attend_segments", lambda *a, **k: attended.append(a[3]) or segmented(*a, **k)
    )
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    monkeypatch.setitem(
        ALL_MASK_ATTENTION_FUNCTIONS._global_mapping,
        packed_attention.NAME,
        lambda **k: masks.append(masked(**k)) or masks[-1],
    )
    ours = packed(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert masks == [None], "a packed forward builds no mask"
    assert attended == [[[(0, 5), (5, 12), (12, 15), (15, 24)], [(0, 11), (11, 24)]]] * 2, "one per layer"
    theirs = plain(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for row, sizes in enumerate(lengths):
            start = 0
            for n in sizes:
                alone = plain(input_ids=ids[row : row + 1, start : start + n], use_cache=False).logits[0]
                torch.testing.assert_close(ours[row, start : start + n], alone, rtol=1e-5, atol=1e-5)
                start += n
    labels = ids.roll(-1, 1)
    for model, logits in ((packed, ours), (plain, theirs)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    for (name, a), b in zip(packed.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_padded_batches_and_cached_generation_are_plain_sdpa(pair):
    packed, plain = pair
    torch.manual_seed(2)
    ids = torch.randint(1, 64, (2, 8))
    right = torch.ones(2, 8, dtype=torch.long)
    right[1, 5:] = 0
    left = torch.ones(2, 8, dtype=torch.long)
    left[0, :3] = 0
    with torch.no_grad():
        for mask in (right, left):
            a = packed(input_ids=ids, attention_mask=mask, use_cache=False).logits
            b = plain(input_ids=ids, attention_mask=mask, use_cache=False).logits
            assert torch.equal(a[mask.bool()], b[mask.bool()])
        kwargs = {"attention_mask": left, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(packed.generate(input_ids=ids, **kwargs), plain.generate(input_ids=ids, **kwargs))


def test_saved_config_names_no_arctic_attention(pair, tmp_path):
    packed, _ = pair
    packed.save_pretrained(tmp_path)
    assert packed_attention.NAME not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize(
    ("model_type", "extra", "reason"),
    [
        ("mistral", {"sliding_window": 16}, "sliding-window"),
        ("llama", {"attn_implementation": "eager"}, "not 'sdpa'"),
        ("gpt2", {}, "not among those checked"),
    ],
)
def test_models_it_does_not_cover_keep_the_block_mask(model_type, extra, reason):
    if model_type == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, attn_implementation="sdpa")
        model = GPT2LMHeadModel(config)
    else:
        model = tiny(model_type, **extra)
    why_not = packed_attention.enable(model)
    assert reason in why_not
    assert model.config._attn_implementation != packed_attention.NAME
    assert "transformers' block mask" in packed_attention.how_kept_apart(model, why_not)


MOE = {"num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}


@pytest.mark.parametrize("model_type", sorted(packed_attention.FAMILIES))
def test_every_listed_family_attends_packed_samples_as_transformers_does(model_type):
    """FAMILIES' claim: each passes position_ids to its attention and nothing else shapes the scores."""
    extra = {k: v for k, v in MOE.items() if model_type.endswith("moe") or model_type == "mixtral"}
    extra |= {"pad_token_id": 0, "sliding_window": None}  # defaults of some configs: ids past 64, a window
    plain = tiny(model_type, **extra).eval()
    packed = copy.deepcopy(plain)
    assert packed_attention.enable(packed) is None
    ids, positions, _ = packed_batch()
    with torch.no_grad():
        ours = packed(input_ids=ids, position_ids=positions, use_cache=False).logits
        theirs = plain(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
