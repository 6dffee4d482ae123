"""The Berth scheduler daemon."""
