"""Data: synthetic videos and training records."""
