"""Envelope policy."""
