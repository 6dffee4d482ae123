"""The Berth agent: registers a worker host, heartbeats, and runs its assignments."""
