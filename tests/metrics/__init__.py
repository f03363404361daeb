"""
Tests for L{qutemail.metrics}.
"""
