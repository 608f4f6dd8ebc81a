"""`python -m lumbar_fast` (and `torchrun -m lumbar_fast`) runs the CLI."""

from lumbar_fast.cli import main

if __name__ == "__main__":
    main()
