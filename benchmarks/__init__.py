"""carseg's benchmark harness: every backend side by side (`python -m benchmarks --help`)."""
