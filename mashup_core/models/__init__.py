"""Models: loading a base model safely, and the checkpoint library with its one validation."""
