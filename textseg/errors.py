"""Exceptions raised by textseg for bad input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or configuration.

    The message always names the offending file or value and the problem, so that a user can fix the input
    before any training starts.
    """
