"""Throughput benchmarks: `python -m benchmarks.<ingest|loader|train|pipeline>`; see docs/benchmarks.md. The
studies that train models to choose a default live apart, in `benchmarks.studies`."""
