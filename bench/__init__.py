"""Benchmarks: scripts that start real servers on 127.0.0.1, run the archiver and the tools an
operator would otherwise use, and print figures (``make bench``; see BENCHMARKS.md)."""
