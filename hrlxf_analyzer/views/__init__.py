"""One module per page of the analyzer; each has ``render(store, params)``."""
