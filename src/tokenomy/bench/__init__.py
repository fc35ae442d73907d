"""Benchmarks: tasks, runners, peers, reports."""
