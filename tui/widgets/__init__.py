"""Console widgets: terminal, file manager, dashboard."""
