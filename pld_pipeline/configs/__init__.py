"""Pydantic configs: the one parameter of each flow, the CLI and the UI form."""
