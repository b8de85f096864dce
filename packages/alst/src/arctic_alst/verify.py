"""The alst feature's `arctic verify` checks (registered through its `Feature.verify`).

- `sp`: `sequence_parallel_size = 2` on 2 ranks (each holds half of every sequence, Ulysses
  attention) vs the same step on 1 rank without it: the step's loss and gradients.
- `tiled`: `tiled_mlp_compute` on vs off on 1 rank: the step's loss and gradients.

Both use one step holding the whole verify sample set, ZeRO stage 0 and fp32, against their own
reference with every alst key off (the recipe may switch some on). `sp` runs unpacked; `tiled`
packs the samples into rows of 3 tiles where the method packs (so that real tokens reach every
tile, not only the first: short samples padded to 3 tiles would leave the later ones padding),
and pads them to 3 tiles where it does not (DPO), which tests the first tile only.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from arctic_core.verify import Check, Row, Variant, VariantResult, VerifyContext, compare_step

OFF = ("data.pack_samples=false", "sequence_parallel_size=1", "tiled_mlp_compute=false")
REFERENCE = Variant(name="alst-reference", set=OFF)


class SequenceParallelCheck(Check):
    name = "sp"
    description = "sequence_parallel_size 2 on 2 ranks vs 1 rank: loss + grads of one step"

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        sp = Variant(name="alst-sp2", set=(*OFF, "sequence_parallel_size=2"), ranks=2)
        return [REFERENCE, sp]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        reference = results["alst-reference"]
        compared = f"{reference.rows} samples, 2 ranks sharing each sequence vs 1 rank (1 step, ZeRO 0, fp32)"
        return compare_step(self, reference, results["alst-sp2"], compared)


class TiledMLPCheck(Check):
    name = "tiled"
    description = "tiled_mlp_compute on vs off: loss + grads of one step"
    TILES = 3

    def variants(self, ctx: VerifyContext) -> list[Variant]:
        # Tiles are ceil(tokens / hidden size): rows padded to 3 x hidden give 3 tiles.
        length = self.TILES * ctx.hidden_size()
        pack = f"data.pack_samples={'true' if packs(ctx) else 'false'}"
        long_rows = (pack, OFF[1], 'data.pad_to="max_length"', f"data.max_length={length}")
        return [
            Variant(name="alst-untiled", set=(*long_rows, "tiled_mlp_compute=false")),
            Variant(name="alst-tiled", set=(*long_rows, "tiled_mlp_compute=true")),
        ]

    def compare(self, results: Mapping[str, VariantResult]) -> Row:
        reference = results["alst-untiled"]
        packed = 0 < reference.rows < reference.samples
        how = f"packed into {reference.rows} rows of" if packed else "padded to"
        samples = reference.samples or reference.rows
        compared = f"{samples} samples {how} {self.TILES} tiles, MLP tiled vs whole (1 step, ZeRO 0, fp32)"
        return compare_step(self, reference, results["alst-tiled"], compared)


def packs(ctx: VerifyContext) -> bool:
    """Whether the recipe's method can pack its data (DPO's pairs are never packed)."""
    try:
        attrs.evolve(ctx.config.data, pack_samples=True)
    except (ValueError, TypeError):
        return False
    return True


def checks() -> list[Check]:
    return [SequenceParallelCheck(), TiledMLPCheck()]
