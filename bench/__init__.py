"""Benchmarks: each module's rows() returns (figure, baseline, ratio) measured in one run."""
