"""Runnable examples (run from the repository root)."""
