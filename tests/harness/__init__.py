"""Test harness: real PostgreSQL databases, Redis prefixes and anvil nodes."""
