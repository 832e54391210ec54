"""python -m experiments.omniglot: its command line (main.cli)."""

from experiments.omniglot import main

main.cli()
