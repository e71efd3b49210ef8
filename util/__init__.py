"""Helpers for notebooks: `from util import vis`."""
