"""`python -m arctic_core ...` is the `arctic` command; DeepSpeed's launcher starts each rank this way.

The launcher puts `--local_rank=N` straight after the module name, before the subcommand
(`python -m arctic_core --local_rank=0 train recipe.toml`); it is moved to the end, where
the `train` command accepts it.
"""

from __future__ import annotations

import sys

from arctic_core.cli import main


def reorder_local_rank(argv: list[str]) -> list[str]:
    """Move `--local_rank=N` / `--local_rank N` to the end of the arguments."""
    rest: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank="):
            moved.append(arg)
        elif arg == "--local_rank" and i + 1 < len(argv):
            moved.append(f"--local_rank={argv[i + 1]}")
            i += 1
        else:
            rest.append(arg)
        i += 1
    return rest + moved


if __name__ == "__main__":
    main(reorder_local_rank(sys.argv[1:]))
