"""The embedded demo world: synthetic tasks, a tiny model, a LoRA library, its measured story."""
