"""
Tests for L{qutemail.content}.
"""
