"""Step 3 of the method, training: the loop, initialisation from a merge, the mashup init pipeline."""
