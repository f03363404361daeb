"""Listener tests."""
