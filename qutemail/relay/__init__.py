"""
Outbound delivery: MX resolution and the ESMTP relay client.
"""
