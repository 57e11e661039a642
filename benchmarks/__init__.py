"""Benchmarks of spfmilter over the real milter protocol (run as python -m benchmarks.NAME)."""
