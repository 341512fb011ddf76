"""Step 2 of the method, merging: LoRA-space merge methods, weight strategies and their objective."""
