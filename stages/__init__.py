"""APES pipeline stages: one module per stage, shared domain code beside them."""

__version__ = "0.1.0"
