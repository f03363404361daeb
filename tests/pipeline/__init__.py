"""Tests for pipeline."""
