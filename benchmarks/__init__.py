"""The benchmark harness that `fastelbo bench` runs (installed as `fastelbo.benchmarks`)."""
