"""The append-only audit log: recording, filtering and export."""
