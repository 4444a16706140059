"""batchml."""
