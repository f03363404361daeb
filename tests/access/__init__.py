"""
Tests for L{qutemail.access}.
"""
