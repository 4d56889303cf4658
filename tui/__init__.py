"""Adhoc technician console (Textual)."""
