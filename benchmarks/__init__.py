"""Throughput benchmarks: `python -m benchmarks.<ingest|loader|train>`; see docs/benchmarks.md."""
