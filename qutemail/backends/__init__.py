"""QutEmail backends."""
