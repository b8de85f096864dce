"""`arctic train`: run in this process, or re-launch through DeepSpeed's launcher.

Without launcher options (or with options that ask for one process) the recipe trains in
the current process, as rank 0 of a world of one. Otherwise the command re-runs itself as
`python -m arctic_core [method] train RECIPE --set ...` under `deepspeed.launcher.runner`,
one rank per process; each rank receives `--local_rank` and the launcher's environment
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). On a machine without CUDA, `--num_gpus 2`
starts two CPU ranks over gloo. The recipe is checked before anything is launched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from arctic_core.errors import RecipeError
from arctic_core.recipe import Recipe, load_recipe


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` in launcher arguments."""
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def single_process(launcher_args: Sequence[str]) -> bool:
    """True when the launcher options ask for one process on one machine (or there are none)."""
    if not launcher_args:
        return True
    known = {"--num_gpus", "--num_nodes"}
    flags = [a.split("=", 1)[0] for a in launcher_args if a.startswith("--")]
    if any(flag not in known for flag in flags):
        return False
    return _option(launcher_args, "num_gpus") in (None, "1") and _option(launcher_args, "num_nodes") in (
        None,
        "1",
    )


def run_in_process(recipe: Recipe, local_rank: int | None = None) -> None:
    """Build the recipe's trainer here and train (a rank of a launched job, or a one-rank run).

    Rank 0 holds the run folder's lock for the whole run (`arctic_core.engine.runlock`); outside
    the training loop a stop signal unwinds the setup and is reported with its phase (`stops`).
    """
    from arctic_core.engine.runlock import RunLock
    from arctic_core.engine.runstatus import write_status
    from arctic_core.stops import signals_raise

    trainer_class = recipe.trainer_class()
    rank = int(os.environ.get("RANK", "0"))
    with signals_raise(), RunLock.for_rank(recipe.config.run_dir, rank):
        trainer = trainer_class(recipe.config, local_rank=local_rank)
        trainer.recipe_notes = recipe.notes
        try:
            trainer.train()
        except BaseException as exc:
            if rank == 0 and trainer.log is not None:  # the run folder is this run's (setup.run_folder)
                write_status(recipe.config.run_dir, exc, trainer.state.global_step)
            raise
        if rank == 0:
            write_status(recipe.config.run_dir, None, trainer.state.global_step)
            print(f"arctic: finished; plot the run with `arctic report {recipe.config.run_dir}`")


def relaunch_command(
    recipe: str, overrides: Sequence[str], launcher_args: Sequence[str], method: str | None
) -> list[str]:
    """The argument list for `deepspeed.launcher.runner.main`: launcher options, then this command."""
    args = list(launcher_args)
    if _option(args, "master_port") is None and _option(args, "hostfile") is None:
        from arctic_core.engine.distributed import free_port

        args += ["--master_port", str(free_port())]
    command = ["--module", "arctic_core", *([method] if method else []), "train", recipe]
    for override in overrides:
        command += ["--set", override]
    return args + command


def _thread_defaults(launcher_args: Sequence[str]) -> None:
    """CPU ranks share the machine's cores: give each an equal share unless OMP_NUM_THREADS is set."""
    from arctic_core.engine.distributed import has_cuda

    if has_cuda():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ranks = int(_option(launcher_args, "num_gpus") or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(ranks, 1))))


def train(
    recipe: str, overrides: list[str], launcher_args: list[str], *, method: str | None, local_rank: int | None
) -> None:
    _check_nodes(launcher_args)
    loaded = load_recipe(recipe, overrides, method=method)
    if single_process(launcher_args):
        run_in_process(loaded, local_rank)
        return
    from arctic_core.recipe.checks import preflight

    # Refuse a recipe that cannot train before starting ranks (they check again, and log the warnings).
    preflight(loaded.config, trainer=loaded.trainer_class(), source=recipe, warn=lambda _: None)
    if _option(launcher_args, "node_rank") in (None, "0"):  # other nodes' rank 0 runs elsewhere
        from arctic_core.engine.runlock import check_free

        check_free(loaded.config.run_dir)  # rank 0 takes the lock; refuse a busy folder before launching
    _thread_defaults(launcher_args)
    _quiet_single_node_warning(launcher_args)
    from deepspeed.launcher import runner

    _forward_stop_signals()
    runner.main(relaunch_command(recipe, overrides, launcher_args, method))


DEFAULT_HOSTFILE = "/job/hostfile"
"""Where DeepSpeed's launcher looks for a hostfile when `--hostfile` is not given."""


def _check_nodes(launcher_args: Sequence[str]) -> None:
    """Several nodes need a hostfile (DeepSpeed's launcher learns the nodes and their slots from it)."""
    nodes = _option(launcher_args, "num_nodes")
    if nodes in (None, "1", "-1") or _option(launcher_args, "hostfile") or os.path.isfile(DEFAULT_HOSTFILE):
        return
    raise RecipeError(
        f"--num_nodes {nodes} needs a hostfile: DeepSpeed's launcher reads the nodes from it. Write one "
        "line per node, `<hostname> slots=<GPUs on it>`, and pass --hostfile FILE; without ssh between "
        "the nodes, run the same command on each node with --no_ssh --node_rank <0..N-1> --master_addr "
        "<node 0's address> (docs/training.md, 'Several nodes')",
        path="--num_nodes",
    )


def _quiet_single_node_warning(launcher_args: list[str]) -> None:
    """Drop DeepSpeed's "Unable to find hostfile" warning when no hostfile was asked for (one node).

    The per-node launcher DeepSpeed starts still prints its own INFO lines (docs/training.md).
    """
    if _option(launcher_args, "hostfile") is not None:
        return
    from deepspeed.utils import logger

    logger.addFilter(lambda record: "Unable to find hostfile" not in record.getMessage())


def _forward_stop_signals() -> None:
    """Pass SIGTERM on to DeepSpeed's launcher process, which DeepSpeed's runner does not do.

    The launcher then sends SIGTERM to every rank, and the ranks stop after the current step with
    a checkpoint (docs/training.md, "Stopping"). SIGINT (Ctrl-C) already reaches the launcher from
    the terminal, so here it is ignored rather than ending this process while the ranks save.
    """
    import signal

    import psutil

    def forward(signum: int, frame: object) -> None:
        for child in psutil.Process().children():
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
