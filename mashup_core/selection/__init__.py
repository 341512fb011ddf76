"""Step 1 of the method, selection: answer log-likelihoods, relevance scorers, the lm-eval bridge."""
