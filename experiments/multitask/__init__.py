"""Multi-task learning with balancing methods on tasks of controlled correlation.

main.py builds the experiment, config.py holds its fields and their defaults, README.md its
protocol, command and results table.
"""
