"""Plumbing every stage shares: configuration, errors, atomic writes, progress, Arrow schemas, run names."""
