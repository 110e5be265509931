"""Session fixtures for the training area."""
