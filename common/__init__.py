"""Shared by the scheduler, the agent and the CLI: models, states, codec, client."""

__version__ = "0.1.0"
