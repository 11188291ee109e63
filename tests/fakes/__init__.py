"""Fake upstream services used by the integration tests."""
