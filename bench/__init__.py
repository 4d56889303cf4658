"""Adhoc's benchmarks: each figure measured side by side with its anchor (OpenSSH, direct SSH).

Run them all with `python -m bench`; each module also runs alone (`python -m bench.transfer`).
Nothing here runs in CI or the test suite. Results are kept in docs/BENCHMARKS.md.
"""
