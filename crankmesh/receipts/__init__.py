"""Receipts: per-executor hash chains, persistence, audit, reputation."""
