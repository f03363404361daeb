"""
Tests for L{qutemail.qkd}.
"""
