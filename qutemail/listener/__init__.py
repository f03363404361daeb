"""QutEmail listener."""
