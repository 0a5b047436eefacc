"""Property-based fuzzing of a live Steward's HTTP endpoints (``python -m tests.fuzz``)."""
