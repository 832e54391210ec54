"""python -m experiments.sinusoid: its command line (main.cli)."""

from experiments.sinusoid import main

main.cli()
