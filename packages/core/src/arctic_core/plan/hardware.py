"""Accelerator presets for `arctic plan --hardware 8xH100` and `--memory 24GiB`.

Per-device memory is the total `nvidia-smi` reports for the card (MiB, 1 MiB = 2^20 bytes), which
is what `torch.cuda.mem_get_info` starts from; the marketing "80GB" of an H100 is 81,559 MiB.
"""

from __future__ import annotations

import re

import attrs

from arctic_core.errors import RecipeError

MIB = 2**20
GIB = 2**30

PRESETS: dict[str, int] = {
    "H100": 81_559 * MIB,  # H100 SXM/PCIe 80GB HBM3
    "H200": 143_771 * MIB,  # H200 141GB HBM3e
    "A100-40GB": 40_960 * MIB,
    "A100-80GB": 81_920 * MIB,
    "L4": 23_034 * MIB,  # 24GB GDDR6
    "B200": 183_359 * MIB,  # 192GB HBM3e (180 GiB usable)
}
"""Device name -> bytes of memory per device."""

_HARDWARE = re.compile(r"^(?:(?P<count>\d+)\s*[xX*]\s*)?(?P<name>[A-Za-z0-9-]+)$")
_MEMORY = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B|B)?$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


@attrs.frozen(kw_only=True)
class Hardware:
    """Where the recipe would run: `devices` per node x `nodes`, each with `memory` bytes."""

    name: str
    devices: int
    nodes: int = 1
    memory: int

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    def describe(self) -> str:
        nodes = f" x {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{self.devices}x{self.name}{nodes} ({self.memory / GIB:.1f} GiB per device)"


def human(size: int) -> str:
    """`size` bytes as GiB (two decimals) from 1 GiB on, else as MiB (one decimal)."""
    return f"{size / GIB:.2f} GiB" if abs(size) >= GIB else f"{size / MIB:.1f} MiB"


def accepted() -> str:
    return ", ".join(PRESETS)


def parse_memory(text: str) -> int:
    """`24GiB`, `80GB`, `81559MiB` or a plain number of bytes."""
    match = _MEMORY.match(text.strip())
    if match is None:
        raise RecipeError(f"{text!r} is not a memory size; write e.g. 24GiB or 80GB", path="--memory")
    unit = (match["unit"] or "B").lower()
    return int(float(match["number"]) * _UNITS[unit])


def parse_hardware(text: str, *, nodes: int = 1, memory: str | None = None) -> Hardware:
    """`8xH100` (count x preset; the count defaults to 1), optionally with another memory per device."""
    match = _HARDWARE.match(text.strip())
    names = {name.lower(): name for name in PRESETS}
    name = names.get(match["name"].lower()) if match else None
    if match is None or name is None:
        raise RecipeError(
            f"unknown hardware {text!r}; write COUNTxNAME with NAME one of {accepted()} (e.g. 8xH100)",
            path="--hardware",
        )
    devices = int(match["count"] or 1)
    if devices < 1 or nodes < 1:
        raise RecipeError(
            f"needs at least one device and one node, got {text!r} and {nodes}", path="--hardware"
        )
    size = parse_memory(memory) if memory else PRESETS[name]
    return Hardware(name=name, devices=devices, nodes=nodes, memory=size)
