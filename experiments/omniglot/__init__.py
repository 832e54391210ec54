"""Omniglot few-shot classification: meta-train on the MAML split, evaluate 600 test episodes.

main.py builds the experiment, config.py holds its fields and their defaults, README.md its
protocol, command and results table.
"""
