"""Starting torch.distributed for a run, on GPUs (nccl) or CPUs (DeepSpeed's CPU accelerator, gloo).

One rank in the current process needs no environment: `prepare_environment` fills in
MASTER_ADDR, a free MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK when they are unset, so
DeepSpeed never looks for MPI. Without CUDA it also selects DeepSpeed's CPU accelerator
(`DS_ACCELERATOR=cpu`) before DeepSpeed is imported.

DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce op on CPU the first time a
process group starts (about a minute). That op serves only DeepSpeed's inference
all-reduce, which training never calls, so `init_distributed` marks it unavailable and
nothing is compiled (see docs/training.md).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

SHM_OP_NAME = "deepspeed_shm_comm"


def has_cuda() -> bool:
    return torch.cuda.is_available()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_environment(local_rank: int | None = None) -> None:
    """Defaults for a run that no launcher started, and the CPU accelerator where there is no GPU."""
    if not has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if not launched:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


def _skip_shm_op() -> None:
    """Mark DeepSpeed's CPU shared-memory op incompatible, so its backend does not compile it."""
    import deepspeed.ops

    compatible: dict[str, Any] | None = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible[SHM_OP_NAME] = False


def init_distributed(local_rank: int | None = None) -> None:
    """Start the process group once per process (nccl on GPUs, gloo on CPUs)."""
    prepare_environment(local_rank)
    import deepspeed

    if torch.distributed.is_initialized():
        return
    if not has_cuda():
        _skip_shm_op()
    else:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if os.environ.get("WORLD_SIZE") == "1":
        # A world of one needs no rendezvous: an in-memory store cannot lose a race for a port.
        torch.distributed.init_process_group(
            "nccl" if has_cuda() else "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
        )
    deepspeed.init_distributed(
        dist_backend="nccl" if has_cuda() else "gloo", auto_mpi_discovery=False, verbose=False
    )


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def device() -> torch.device:
    if has_cuda():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_reduce_sum(values: list[float], dev: torch.device | None = None) -> list[float]:
    """Sum a few numbers over all ranks (in float64, one collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=dev or device())
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    if torch.distributed.is_initialized() and world_size() > 1:
        torch.distributed.barrier()
