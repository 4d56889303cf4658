"""Adhoc relay: the HTTP control plane and SSH routing endpoint."""
