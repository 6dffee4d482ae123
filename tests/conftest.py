"""Fixtures every test module may use: a throwaway PostgreSQL cluster (``pg_cluster``)
and a fresh database in it (``pg_dsn``), from tests/pg.py."""

pytest_plugins = ("tests.pg",)
