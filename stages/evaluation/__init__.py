"""Ranking metrics and the report's figures."""
