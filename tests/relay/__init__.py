"""
Tests for L{qutemail.relay}.
"""
