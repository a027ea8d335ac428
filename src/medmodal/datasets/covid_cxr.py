"""Built-in dataset covid_cxr (being written)."""
