"""The test harness: throwaway PostgreSQL clusters, the TCP fault proxy, live Steward nodes."""
