"""Multi-task intent classification: CLINC150's domains as tasks, per-domain prompts and heads on

main.py builds the experiment, config.py holds its fields and their defaults, README.md its
protocol, command and results table.
"""
