"""Batch imports: many files at once, scheduled now or in the night window."""
