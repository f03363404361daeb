"""
Tests for L{qutemail.jmap}: unit tests, and the JMAP listener over real HTTPS.
"""
