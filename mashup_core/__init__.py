"""Mashup Learning: score, merge and finetune from a checkpoint library."""
__version__ = "0.1.0"
