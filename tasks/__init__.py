"""Pipeline stages: pure functions of (input artifacts, config) -> output artifacts."""
