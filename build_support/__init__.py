"""Build-time helpers for setuptools (not installed: they run only while a wheel is built)."""
