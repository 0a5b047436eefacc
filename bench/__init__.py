"""Benchmarks that print JSON and compare Steward with the official MCP Python SDK server."""
