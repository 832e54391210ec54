"""Few-shot intent classification on a frozen pretrained encoder: one method per run.

main.py builds the experiment, config.py holds its fields and their defaults, README.md its
protocol, command and results table.
"""
