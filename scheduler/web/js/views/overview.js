// The overview: a banner for nodes that need attention, the stats cards, the nodes and
// the job table.

import { fill, fmtCores, fmtCount, fmtMb, h, icon, setHidden, setText, setWidth } from "../dom.js";
import { state } from "../store.js";
import { clusterCharts } from "./clustercharts.js";
import { jobTable } from "./jobs.js";
import { nodeGrid } from "./nodes.js";

export function overviewView(container) {
  const banner = unhealthyBanner();
  const stats = statsCards();
  const charts = clusterCharts();
  const nodes = nodeGrid();
  const jobs = jobTable();
  container.replaceChildren(
    h("div.page", null, banner.el, stats.el, charts.el, nodes.el, jobs.el),
  );
  const tick = setInterval(() => {
    nodes.tick();
    jobs.render();
  }, 1000);
  return {
    render(parts) {
      if (parts.has("nodes")) banner.render();
      if (parts.has("nodes") || parts.has("history")) nodes.render();
      if (parts.has("history")) charts.render();
      if (parts.has("stats") || parts.has("nodes")) stats.render();
      if (parts.has("jobs") || parts.has("stats") || parts.has("nodes")) jobs.render();
    },
    unmount() {
      clearInterval(tick);
      jobs.unmount();
      charts.unmount();
    },
  };
}

function unhealthyBanner() {
  const title = h("strong.banner-title");
  const list = h("ul.banner-list");
  const el = h(
    "div.banner.banner-warn",
    { role: "alert", hidden: true, "data-testid": "unhealthy-banner" },
    h("span.banner-icon", null, icon("alert")),
    h("div.banner-body", null, title, list),
  );
  return {
    el,
    render() {
      const bad = [...state.nodes.values()]
        .filter((n) => n.state === "unhealthy" || n.state === "offline")
        .sort((a, b) => (a.state === b.state ? a.name.localeCompare(b.name) : a.state === "offline" ? -1 : 1));
      setHidden(el, bad.length === 0);
      if (!bad.length) return;
      el.classList.toggle("banner-danger", bad.some((n) => n.state === "offline"));
      const offline = bad.filter((n) => n.state === "offline").length;
      const unhealthy = bad.length - offline;
      const parts = [];
      if (offline) parts.push(`${offline} offline`);
      if (unhealthy) parts.push(`${unhealthy} unhealthy`);
      setText(title, `${bad.length} ${bad.length === 1 ? "node needs" : "nodes need"} attention: ${parts.join(", ")}`);
      fill(
        list,
        ...bad.slice(0, 6).map((n) =>
          h(
            "li",
            null,
            h("b", { text: n.name }),
            ` ${n.state}`,
            n.reason ? ` — ${n.reason}` : "",
            n.running_jobs.length ? ` · ${n.running_jobs.length} job${n.running_jobs.length > 1 ? "s" : ""} on it` : "",
          ),
        ),
        bad.length > 6 ? h("li", { text: `and ${bad.length - 6} more` }) : null,
      );
    },
  };
}

const CARDS = [
  { key: "running", label: "Running", sub: (j) => `${fmtCount(j.assigned)} assigned · ${fmtCount(j.paused)} paused` },
  { key: "queued", label: "Queued", sub: (j, s) => (s.queue_depth ? "waiting for a node" : "nothing waiting") },
  { key: "completed", label: "Completed", sub: () => "exited 0" },
  {
    key: "failed",
    label: "Failed",
    sub: (j) => `${fmtCount(j.timed_out)} timed out · ${fmtCount(j.cancelled)} cancelled`,
  },
];

function statsCards() {
  const cards = CARDS.map((c) => {
    const value = h("div.stat-value", { text: "–" });
    const note = h("div.stat-sub");
    const el = h(
      `div.stat.stat-${c.key}`,
      { "data-testid": `stat-${c.key}` },
      h("div.stat-label", null, h("span.stat-dot"), c.label),
      value,
      note,
    );
    return { ...c, el, value, note };
  });
  const cpu = capacityMeter("CPU");
  const mem = capacityMeter("Memory");
  const nodesLine = h("div.stat-sub");
  const capacity = h(
    "div.stat.stat-capacity",
    { "data-testid": "stat-capacity" },
    h("div.stat-label", null, "Cluster capacity"),
    cpu.el,
    mem.el,
    nodesLine,
  );
  const el = h("section.stats", { "aria-label": "Job counts" }, ...cards.map((c) => c.el), capacity);
  return {
    el,
    render() {
      const s = state.stats;
      if (!s) return;
      for (const c of cards) {
        setText(c.value, fmtCount(s.jobs[c.key]));
        setText(c.note, c.sub(s.jobs, s));
      }
      cpu.set(s.allocated.cpu, s.capacity.cpu, (v) => `${fmtCores(v)}`, "cores");
      mem.set(s.allocated.memory_mb, s.capacity.memory_mb, fmtMb, "");
      const healthy = (s.nodes.idle || 0) + (s.nodes.busy || 0);
      const total = Object.values(s.nodes).reduce((a, b) => a + b, 0);
      setText(nodesLine, `${healthy} of ${total} node${total === 1 ? "" : "s"} healthy`);
    },
  };
}

function capacityMeter(label) {
  const fill = h("span.bar-fill");
  const text = h("span.meter-value");
  const el = h(
    "div.meter.meter-compact",
    null,
    h("div.meter-head", null, h("span.meter-label", { text: label }), text),
    h("div.bar", null, fill),
  );
  return {
    el,
    set(used, total, fmt, unit) {
      const frac = total > 0 ? used / total : 0;
      setWidth(fill, frac);
      fill.classList.toggle("bar-hot", frac >= 0.9);
      setText(text, `${fmt(used)} / ${fmt(total)}${unit ? ` ${unit}` : ""}`);
    },
  };
}
