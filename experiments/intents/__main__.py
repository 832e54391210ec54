"""python -m experiments.intents: its command line (main.cli)."""

from experiments.intents import main

main.cli()
