"""
JMAP (RFC 8620 core, RFC 8621 mail) over HTTPS: the same Maildir++ store,
keys and intake as IMAP and SMTP submission, for web and mobile clients.
"""
