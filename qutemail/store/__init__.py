"""QutEmail store."""
