"""Multi-task image classification on Omniglot's alphabets: a shared Conv4, per-alphabet heads

main.py builds the experiment, config.py holds its fields and their defaults, README.md its
protocol, command and results table.
"""
