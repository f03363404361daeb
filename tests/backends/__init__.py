"""Tests for backends."""
