"""Tests for queue."""
