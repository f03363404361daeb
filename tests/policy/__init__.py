"""Tests for policy."""
