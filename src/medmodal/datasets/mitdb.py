"""Built-in dataset mitdb (being written)."""
