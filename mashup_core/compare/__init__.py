"""Comparisons: training-to-parity, wall-clock ratio and mean ranks. Pure functions, no I/O."""
