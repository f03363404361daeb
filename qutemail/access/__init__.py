"""
Reading mail: the owner's view of an account's Maildir++ mailbox (folders,
persistent UIDs and flags), for IMAP4 and POP3.
"""
