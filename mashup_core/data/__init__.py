"""Data: targets (demo tasks, user files with field mappings, the 8 benchmarks) as MCExample lists."""
