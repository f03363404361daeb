"""The webmail: a single page that reads and sends mail through JMAP."""
