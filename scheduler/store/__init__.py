"""Durable storage of the scheduler's state. SQL lives only in this package."""

from scheduler.store.base import Changes, EndedRow, Loaded, Store
from scheduler.tokens import TokenRow

__all__ = ["Changes", "EndedRow", "Loaded", "Store", "TokenRow"]
