"""Tests for the webmail."""
