"""Executors run one attempt of a job: ``docker`` (the sandbox) or ``process`` (none)."""
