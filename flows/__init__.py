"""Flows and the `hrlxf` command line."""
