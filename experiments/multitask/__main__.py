"""python -m experiments.multitask: its command line (main.cli)."""

from experiments.multitask import main

main.cli()
