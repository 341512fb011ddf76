"""Execution: run specs, run records and their index, the accelerator slot, detached processes."""
