"""Durable storage of the scheduler's state. SQL lives only in this package."""

from scheduler.store.base import Changes, EndedRow, Loaded, Store, TokenRow

__all__ = ["Changes", "EndedRow", "Loaded", "Store", "TokenRow"]
