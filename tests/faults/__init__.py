"""The fault-injection catalog: each scenario is a test marked ``faults`` that asserts its blast
radius exactly and reports what it saw; ``python -m tests.faults`` runs them and prints a table."""
