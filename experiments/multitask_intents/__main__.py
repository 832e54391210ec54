"""python -m experiments.multitask_intents: its command line (main.cli)."""

from experiments.multitask_intents import main

main.cli()
