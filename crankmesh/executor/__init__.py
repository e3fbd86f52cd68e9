"""Executor side: bidding agent, admission, sandbox, hardware, benchmarks."""
