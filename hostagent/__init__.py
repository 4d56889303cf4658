"""Adhoc temporary host: the agent a customer runs to receive support."""
