"""Session fixtures for the data area."""
