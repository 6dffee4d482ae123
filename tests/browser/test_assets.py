"""The dashboard's files as the scheduler serves them: no token needed, a strict
Content-Security-Policy, JavaScript served as JavaScript, nothing outside the web
directory, and every module the page imports present."""

from __future__ import annotations

import re

import aiohttp

from scheduler.routes.dashboard import WEB_DIR
from tests.support import SchedulerProcess

IMPORT = re.compile(r"""^import .*? from "(\.{1,2}/[^"]+)";$""", re.M | re.S)


async def test_the_page_and_its_files_are_served_without_a_token(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(sched.url + "/") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        html = await r.text()
    for ref in re.findall(r'(?:src|href)="(/ui/[^"]+)"', html):
        async with http.get(sched.url + ref) as r:
            assert r.status == 200, ref
    async with http.get(sched.url + "/ui/js/main.js") as r:
        assert r.status == 200
        assert r.content_type == "text/javascript"
        assert "Content-Security-Policy" in r.headers
    async with http.get(sched.url + "/api/v1/jobs") as r:
        assert r.status == 401


async def test_nothing_outside_the_web_directory_is_served(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    for path in (
        "/ui/../routes/dashboard.py",
        "/ui/%2e%2e/routes/dashboard.py",
        "/ui/..%2froutes%2fdashboard.py",
        "/ui/js",
        "/ui/missing.js",
        "/ui/.hidden",
    ):
        async with http.get(sched.url + path) as r:
            assert r.status == 404, path


def test_every_module_the_page_imports_exists() -> None:
    modules = list(WEB_DIR.rglob("*.js"))
    assert modules
    for module in modules:
        for ref in IMPORT.findall(module.read_text()):
            assert (module.parent / ref).resolve().is_file(), f"{module.name} imports {ref}"
