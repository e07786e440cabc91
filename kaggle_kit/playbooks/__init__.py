"""Competition techniques that are more than a config field of the engine: retrieved context, the
fitted temperature, the mean-prompt search, synthetic training data, and few-shot / tuned perplexity."""
