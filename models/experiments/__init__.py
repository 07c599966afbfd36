"""Experiments: named grids of training runs, run in-process or on Ray, and their reports."""
