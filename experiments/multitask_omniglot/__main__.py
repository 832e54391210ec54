"""python -m experiments.multitask_omniglot: its command line (main.cli)."""

from experiments.multitask_omniglot import main

main.cli()
