"""Held-out quality measures of a checkpoint."""
