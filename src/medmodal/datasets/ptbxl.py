"""Built-in dataset ptbxl (being written)."""
