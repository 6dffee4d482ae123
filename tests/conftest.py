"""Fixtures every test module may use: a throwaway PostgreSQL cluster (``pg_cluster``)
and a fresh database in it (``pg_dsn``), from tests/pg.py; a leading and a standing-by
scheduler on one such database (``pair``), from tests/ha.py."""

pytest_plugins = ("tests.pg", "tests.ha")
