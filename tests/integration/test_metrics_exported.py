"""What the scheduler's and an agent's /metrics say after real traffic: promtool
accepts both, the new figures (request latency by route, commits, queue wait, run time,
node allocation, subscribers, the agent's own) hold what happened, and the Grafana
dashboard in deploy/grafana asks only for metrics Berth exports, in PromQL Prometheus
parses."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import __version__
from scheduler.store.commit import Tally
from tests.support import REPO, Api, SchedulerProcess, free_port, start_process_agent, wait_until

pytestmark = pytest.mark.stores("sqlite")

DASHBOARD = REPO / "deploy" / "grafana" / "berth.json"
#: what Grafana puts in place of its variables before it sends an expression
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
#: the suffixes of the samples of a family, by its type
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}


@dataclass
class Scraped:
    scheduler: str
    agent: str
    #: the job that completed and the one that failed
    job_ids: list[str]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: Samples, metric: str, **labels: str) -> float:
    return got[(metric, frozenset(labels.items()))]


def exported_names(*texts: str) -> set[str]:
    """Every sample name the texts' families may have, whether or not one was seen."""
    names = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
            names |= {s.name for s in family.samples}
    return names


async def _scrape(http: aiohttp.ClientSession, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url + "/metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.text()


@pytest.fixture(scope="module")
def traffic_sched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(tmp_path_factory.mktemp("metrics") / "state").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
async def scraped(
    traffic_sched: SchedulerProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scraped]:
    """A scheduler and a real agent (with --metrics-listen) after a job completed, one
    failed, one was asked for that does not exist and a path that is none was called."""
    sched = traffic_sched
    port = free_port()
    agent = start_process_agent(
        sched, tmp_path_factory.mktemp("agent"), "m", "--metrics-listen", f"127.0.0.1:{port}"
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            admin = Api(http, sched.url, sched.admin_token)
            ids = []
            for command in (["true"], ["false"]):
                status, job = await admin.post(
                    "/api/v1/jobs", {"image": "busybox", "command": command}
                )
                assert status == 201, job
                ids.append(job["id"])
            assert (await admin.get("/api/v1/jobs/nosuchjob"))[0] == 404
            assert (await admin.get("/api/v1/nosuchpath"))[0] == 404

            async def agent_done() -> str | None:
                try:
                    text = await _scrape(http, f"http://127.0.0.1:{port}")
                except aiohttp.ClientError:
                    return None
                got = samples(text)
                ended = sum(
                    value(got, "berth_agent_attempts_ended_total", state=s)
                    for s in ("completed", "failed")
                )
                return text if ended == 2 and value(got, "berth_agent_attempts") == 0 else None

            agent_text = await wait_until(agent_done, timeout=30, interval=0.1)

            async def both_ended() -> bool:
                jobs = [(await admin.get(f"/api/v1/jobs/{i}"))[1]["state"] for i in ids]
                return jobs == ["completed", "failed"]

            await wait_until(both_ended, timeout=30)
            yield Scraped(await _scrape(http, sched.url, sched.admin_token), agent_text, ids)
    finally:
        agent.kill()
        agent.wait(timeout=30)


@pytest.mark.parametrize("which", ["scheduler", "agent"])
def test_promtool_accepts_the_metrics(scraped: Scraped, which: str) -> None:
    text = getattr(scraped, which)
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_scheduler_times_requests_by_route_commits_waits_and_runs(scraped: Scraped) -> None:
    got = samples(scraped.scheduler)
    count = "berth_http_request_duration_seconds_count"
    assert value(got, count, method="POST", route="/api/v1/jobs", status_class="2xx") == 2
    assert value(got, count, method="GET", route="/api/v1/jobs/{id}", status_class="4xx") == 1
    assert value(got, count, method="GET", route="unmatched", status_class="4xx") == 1
    routes = {dict(labels).get("route") for (name, labels) in got if name == count}
    # Templates, never a raw path: no id of a job, no made-up path.
    assert not any(i in str(routes) for i in [*scraped.job_ids, "nosuch"]), routes

    assert value(got, "berth_store_commit_seconds_count") >= 1
    assert value(got, "berth_store_commit_batch_size_sum") >= value(
        got, "berth_store_commit_batch_size_count"
    )
    assert value(got, "berth_store_commit_failures_total") == 0

    assert value(got, "berth_job_queue_wait_seconds_count") == 2
    assert value(got, "berth_job_run_seconds_count", state="completed") == 1
    assert value(got, "berth_job_run_seconds_count", state="failed") == 1
    assert value(got, "berth_job_run_seconds_count", state="cancelled") == 0
    assert value(got, "berth_jobs_ended_total", state="completed") == 1
    assert value(got, "berth_jobs_ended_total", state="failed") == 1

    assert value(got, "berth_node_cpu_capacity_cores", node="m") > 0
    assert value(got, "berth_node_memory_capacity_bytes", node="m") > 0
    assert value(got, "berth_node_cpu_allocated_cores", node="m") == 0
    assert value(got, "berth_node_gpus_capacity", node="m") == 0


def test_the_agent_counts_its_starts_ends_and_slots(scraped: Scraped) -> None:
    got = samples(scraped.agent)
    assert value(got, "berth_agent_info", name="m", executor="process", version=__version__) == 1
    assert value(got, "berth_agent_container_start_seconds_count", outcome="started") == 2
    assert value(got, "berth_agent_container_start_seconds_count", outcome="failed") == 0
    assert value(got, "berth_agent_attempts_ended_total", state="completed") == 1
    assert value(got, "berth_agent_attempts_ended_total", state="failed") == 1
    assert value(got, "berth_agent_running_jobs") == 0
    assert value(got, "berth_agent_slots") == 2
    assert value(got, "berth_agent_slots_used") == 0
    assert value(got, "berth_agent_log_unshipped_bytes") == 0
    assert value(got, "berth_agent_log_ship_lag_seconds") == 0
    assert value(got, "berth_agent_reports_unacknowledged") == 0
    assert value(got, "berth_agent_registered") == 1
    assert value(got, "berth_agent_scheduler_reachable") == 1
    assert value(got, "berth_agent_heartbeat_seconds_count") >= 1


async def test_open_streams_and_subscriptions_are_counted(
    traffic_sched: SchedulerProcess,
) -> None:
    sched = traffic_sched
    auth = {"Authorization": f"Bearer {sched.admin_token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with (
            http.get(
                f"{sched.url}/api/v1/events", headers={**auth, "Accept": "text/event-stream"}
            ) as sse,
            http.ws_connect(f"{sched.url}/api/v1/ws", headers=auth) as ws,
        ):
            assert sse.status == 200
            for sub in ("a", "b"):
                await ws.send_json({"op": "subscribe", "id": sub})
                assert (await ws.receive_json())["type"] == "subscribed"
            got = samples(await _scrape(http, sched.url, sched.admin_token))
            assert value(got, "berth_stream_subscribers", kind="sse") == 1
            assert value(got, "berth_stream_subscribers", kind="ws") == 1
            assert value(got, "berth_event_subscriptions") == 3

        async def closed() -> bool:
            got = samples(await _scrape(http, sched.url, sched.admin_token))
            return (
                value(got, "berth_stream_subscribers", kind="sse") == 0
                and value(got, "berth_stream_subscribers", kind="ws") == 0
                and value(got, "berth_event_subscriptions") == 0
            )

        await wait_until(closed, timeout=15)


def test_a_tally_puts_a_value_on_a_bound_in_that_bound_s_bucket() -> None:
    tally = Tally((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        tally.add(v)
    assert tally.counts == [2, 2, 1]
    assert tally.sum == pytest.approx(8.65)


# --- the Grafana dashboard -----------------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))

    walk(doc["panels"])
    return out


def grafana_free(expr: str) -> str:
    for variable, replacement in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, replacement)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


#: PromQL words that are not metric names
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end", "atan2"}
)
#: words followed by a list of label names in parentheses
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"|(?P<number>[0-9][0-9A-Za-z_.]*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<other>\S)"
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: the words that are no function,
    aggregation, keyword, label (inside braces or a by/on list) or duration."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names = set()
    inside = {"{": 0, "[": 0}
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "other" and text in "{[":
            inside[text] += 1
        elif kind == "other" and text in "}]":
            inside["{" if text == "}" else "["] -= 1
        elif kind == "name" and not inside["{"] and not inside["["]:
            if text in _LABEL_LISTS:
                if following == "(":
                    i = _after_parentheses(tokens, i + 1)
                    continue
            # A word before "(" is a function; before by or without, an aggregation.
            elif following not in ("(", "by", "without") and text not in _KEYWORDS:
                names.add(text)
        i += 1
    return names


def _after_parentheses(tokens: list[tuple[str | None, str]], start: int) -> int:
    """The index after the parenthesis that closes the one at ``start``."""
    depth = 0
    for j in range(start, len(tokens)):
        if tokens[j] == ("other", "("):
            depth += 1
        elif tokens[j] == ("other", ")"):
            depth -= 1
            if depth == 0:
                return j + 1
    return len(tokens)


def test_the_name_reader_finds_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!~"b|c", x="d e"}[5m])))'
        " / on (node) group_left (zone) b offset 5m > bool 2 and without_total"
    )
    assert metric_names(expr) == {"a_bucket", "b", "without_total"}


def test_the_dashboard_parses_and_asks_only_for_exported_metrics(
    scraped: Scraped, tmp_path: Path
) -> None:
    exprs = [(title, grafana_free(expr)) for title, expr in dashboard_expressions()]
    # Prometheus' own parser: each expression as a recording rule (JSON is YAML).
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:expr_{i}", "expr": expr}
                            for i, (_, expr) in enumerate(exprs)
                        ],
                    }
                ]
            }
        )
    )
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    exported = exported_names(scraped.scheduler, scraped.agent)
    used = {name: title for title, expr in exprs for name in metric_names(expr)}
    assert all(metric_names(expr) for _, expr in exprs)
    assert {n: t for n, t in used.items() if n not in exported} == {}
    # What the dashboard is for: each of these is on it.
    assert {
        "berth_queue_depth",
        "berth_jobs",
        "berth_jobs_ended_total",
        "berth_http_request_duration_seconds_bucket",
        "berth_store_commit_seconds_bucket",
        "berth_job_queue_wait_seconds_bucket",
        "berth_node_cpu_allocated_cores",
        "berth_node_memory_allocated_bytes",
        "berth_stream_subscribers",
        "berth_agent_running_jobs",
        "berth_agent_container_start_seconds_bucket",
        "berth_agent_log_ship_lag_seconds",
    } <= set(used)
