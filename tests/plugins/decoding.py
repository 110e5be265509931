"""Session fixtures for the decoding area."""
