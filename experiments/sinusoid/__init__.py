"""Sinusoid regression benchmark: meta-train, evaluate on 600 fresh tasks, plot.

main.py builds the experiment, config.py holds its fields and their defaults, README.md its
protocol, command and results table.
"""
