"""`python -m arctic_core ...` is the `arctic` command (DeepSpeed's launcher starts ranks this way)."""

from arctic_core.cli import main

if __name__ == "__main__":
    main()
