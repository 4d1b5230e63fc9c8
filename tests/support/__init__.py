"""Test support shared by tests and benchmarks: tiny models, a minimal OpenAI-compatible server,
a motion tracker for the semantic corpus."""
