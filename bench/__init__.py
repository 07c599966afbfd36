"""Benchmarks of ConvNN: layers, whole models and scaling sweeps, against the authors' algorithm and the hardware.

`convnn bench layer | model | sweep` (see bench/cli.py) writes JSON, Markdown tables and PNG plots.
Importing this package imports no framework; each command loads what it measures.
"""
