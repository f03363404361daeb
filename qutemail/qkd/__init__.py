"""
The QKD layer: ETSI GS QKD 014 client, embedded KME, message cipher, key vault.
"""
