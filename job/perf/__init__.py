"""Benchmarks: the tutorial's training code against ours."""
