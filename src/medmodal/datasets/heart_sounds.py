"""Built-in dataset heart_sounds (being written)."""
