"""QutEmail pipeline."""
