"""
Content security: the spooled message is handed to rspamd (spam) and clamd
(malware) before the 250, and their verdicts say what becomes of it.
"""
