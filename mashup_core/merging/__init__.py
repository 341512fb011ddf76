"""Step 2 of the method, merging: one registry of merge methods (LoRA → LoRA and full
checkpoints), weight strategies and their objective."""
