"""The parallel topology of a run: how the world's ranks divide into data- and sequence-parallel groups.

With W ranks and a sequence-parallel size S (S divides W), ranks form W/S sequence-parallel
groups of S consecutive ranks: rank r is member `r % S` of group `r // S`. The D = W/S groups
are the data-parallel replicas:

- data: samples are sharded over the D data-parallel ranks (`dp_rank = r // S`); every rank
  of one sequence-parallel group receives the same samples, and a method or feature splits
  each sample between them (`Trainer.prepare_batch`).
- gradients: DeepSpeed sums gradients over all W ranks and divides by D (it is given this
  topology as its `mpu` when S > 1, the interface of its own `parallel_state_sp`), so the
  loop scales each rank's loss by D (see `arctic_core.engine.loop`).
- reductions of counts and metrics run over the whole world: after `prepare_batch` each rank
  holds a disjoint share of the global batch (its samples, its part of their sequences), and
  its counts describe that share.

With S = 1 the topology is plain data parallelism and DeepSpeed gets no `mpu`.
"""

from __future__ import annotations

from typing import Any

import attrs

from arctic_core.errors import RecipeError


@attrs.frozen(kw_only=True)
class Topology:
    """Sizes and this rank's coordinates; process groups are made by `create_groups`."""

    world_size: int
    rank: int
    sequence_parallel_size: int = 1

    def __attrs_post_init__(self) -> None:
        sp = self.sequence_parallel_size
        if sp < 1 or self.world_size % sp:
            raise RecipeError(
                f"is {sp}, which does not divide the {self.world_size} rank(s) of this run",
                path="sequence_parallel_size",
            )

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: the number of different samples a step sees at once per micro-step."""
        return self.world_size // self.sequence_parallel_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sequence_parallel_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sequence_parallel_size

    def sp_ranks(self, group: int) -> list[int]:
        size = self.sequence_parallel_size
        return list(range(group * size, (group + 1) * size))

    def dp_ranks(self, member: int) -> list[int]:
        return list(range(member, self.world_size, self.sequence_parallel_size))


class ProcessGroups:
    """The process groups of a topology, in the interface DeepSpeed reads from an `mpu` object.

    Every rank must create them, in the same order (torch.distributed's rule for `new_group`).
    The `initialize_sequence_parallel` attribute tells DeepSpeed this is a sequence-parallel mpu
    (its data-parallel group is then the whole world, divided by the sequence-parallel size).
    """

    def __init__(self, topology: Topology):
        import torch.distributed as dist

        self.topology = topology
        self.sp_group: Any = None
        self.dp_group: Any = None
        self.world_group: Any = dist.group.WORLD
        if topology.world_size == 1:
            return
        for group in range(topology.dp_size):
            made = dist.new_group(topology.sp_ranks(group))
            if group == topology.dp_rank:
                self.sp_group = made
        for member in range(topology.sequence_parallel_size):
            made = dist.new_group(topology.dp_ranks(member))
            if member == topology.sp_rank:
                self.dp_group = made

    def initialize_sequence_parallel(self, *_: Any) -> None:
        """Present only so that DeepSpeed recognises a sequence-parallel mpu; the groups exist already."""

    def get_sequence_parallel_group(self) -> Any:
        return self.sp_group

    def get_sequence_parallel_world_size(self) -> int:
        return self.topology.sequence_parallel_size

    def get_sequence_parallel_rank(self) -> int:
        return self.topology.sp_rank

    def get_sequence_data_parallel_group(self) -> Any:
        return self.world_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.topology.world_size

    def get_sequence_data_parallel_rank(self) -> int:
        return self.topology.rank

    def get_data_parallel_world_size(self) -> int:
        return self.topology.dp_size

    def get_data_parallel_rank(self) -> int:
        return self.topology.dp_rank

    get_model_parallel_group = get_sequence_parallel_group
    get_model_parallel_world_size = get_sequence_parallel_world_size
    get_model_parallel_rank = get_sequence_parallel_rank


def create_groups(topology: Topology) -> ProcessGroups:
    return ProcessGroups(topology)


def deepspeed_mpu(groups: ProcessGroups) -> ProcessGroups | None:
    """What `deepspeed.initialize(mpu=...)` gets: the groups with sequence parallelism, else None."""
    return groups if groups.topology.sequence_parallel_size > 1 else None
