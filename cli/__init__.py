"""The `berth` command line."""
