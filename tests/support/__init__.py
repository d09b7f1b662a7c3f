"""Helpers and subprocess scripts of the tests (not tests themselves)."""
