"""Relays as a cluster on one database: node identity (nodes.py), relay-to-relay SSH (peers.py)
and several relay processes on one machine (workers.py)."""
