"""Reusable test helpers (real media files written with PyAV)."""
