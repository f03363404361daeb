"""
QutEmail: a Twisted mail server whose internal mail is encrypted at rest with
keys from a QKD Key Management Entity.
"""

__version__ = "0.1.0"
