"""The durable spool journal and the deferred queue."""
