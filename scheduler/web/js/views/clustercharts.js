// The overview's charts: CPU, memory and (where the cluster has any) GPUs as capacity,
// allocated and used; queue depth; jobs started and ended per interval. A range picker
// chooses the window, loaded from the stored history and then grown live.

import { TimeChart } from "../charts.js";
import { fmtCores, fmtDuration, fmtMb, h, setHidden, setText } from "../dom.js";
import { RANGES, history, load, rangeSeconds, use, windowEnd } from "../history.js";

const RESOURCE_SERIES = [
  { label: "Capacity", color: "--chart-capacity", kind: "dash" },
  { label: "Allocated", color: "--chart-allocated", kind: "area" },
  { label: "Used", color: "--chart-used", kind: "line" },
];

export function clusterCharts() {
  const windowFn = () => {
    const end = windowEnd();
    return end ? [end - rangeSeconds(), end] : null;
  };
  const charts = {
    cpu: card("cpu", "CPU", new TimeChart({ series: RESOURCE_SERIES, unit: "cores", sync: "cluster", window: windowFn, testid: "chart-cpu" })),
    memory: card("memory", "Memory", new TimeChart({ series: RESOURCE_SERIES, unit: "mb", sync: "cluster", window: windowFn, testid: "chart-memory" })),
    gpus: card("gpus", "GPUs", new TimeChart({ series: RESOURCE_SERIES, unit: "gpus", sync: "cluster", window: windowFn, testid: "chart-gpus" })),
    queue: card(
      "queue",
      "Queue depth",
      new TimeChart({
        series: [
          { label: "Queued", color: "--chart-queued", kind: "area" },
          { label: "Running", color: "--chart-running", kind: "line" },
        ],
        sync: "cluster",
        window: windowFn,
        testid: "chart-queue",
      }),
    ),
    throughput: card(
      "throughput",
      "Throughput",
      new TimeChart({
        series: [
          { label: "Started", color: "--chart-started", kind: "bars", align: -1 },
          { label: "Ended", color: "--chart-ended", kind: "bars", align: 1 },
        ],
        sync: "cluster",
        window: windowFn,
        testid: "chart-throughput",
      }),
    ),
  };
  setHidden(charts.gpus.el, true);

  const buttons = RANGES.map(([range]) =>
    h("button.range-btn", { type: "button", "data-range": range, "aria-pressed": "false", onclick: () => pick(range) }, range),
  );
  const status = h("span.charts-status");
  const error = h("div.callout.callout-error.charts-error", { hidden: true });
  const el = h(
    "section.panel.charts-panel",
    { "aria-labelledby": "charts-title", "data-testid": "cluster-charts" },
    h(
      "div.panel-head",
      null,
      h("h2#charts-title", null, "Cluster over time ", status),
      h("div.range-picker", { role: "group", "aria-label": "Time range" }, ...buttons),
    ),
    error,
    h("div.charts-grid", null, ...Object.values(charts).map((c) => c.el)),
  );
  const release = use();

  function pick(range) {
    if (range === history.range && !history.error) return;
    load(range);
  }

  function render() {
    for (const b of buttons) {
      const on = b.dataset.range === history.range;
      b.classList.toggle("active", on);
      b.setAttribute("aria-pressed", String(on));
    }
    el.dataset.range = history.range;
    el.dataset.loading = String(history.loading);
    setText(status, history.loading ? "loading…" : history.loaded && !history.error ? `every ${fmtDuration(history.step * 1000)}` : "");
    setHidden(error, !history.error);
    if (history.error) setText(error, `The history could not be loaded: ${history.error.message}`);

    const pts = history.points;
    const xs = pts.map((p) => p.t);
    const three = (key) => [
      xs,
      pts.map((p) => p[key]?.capacity ?? null),
      pts.map((p) => p[key]?.allocated ?? null),
      pts.map((p) => p[key]?.used ?? null),
    ];
    charts.cpu.chart.setData(three("cpu"));
    charts.memory.chart.setData(three("memory_mb"));
    const hasGpus = pts.some((p) => (p.gpus?.capacity || 0) > 0);
    setHidden(charts.gpus.el, !hasGpus);
    if (hasGpus) charts.gpus.chart.setData(three("gpus"));
    charts.queue.chart.setData([xs, pts.map((p) => p.queued ?? null), pts.map((p) => p.running ?? null)]);
    charts.throughput.chart.setData([xs, pts.map((p) => p.started ?? 0), pts.map((p) => p.ended ?? 0)]);

    const last = pts[pts.length - 1];
    setText(charts.cpu.note, last?.cpu ? `${fmtCores(last.cpu.used)} of ${fmtCores(last.cpu.capacity)} cores used` : "");
    setText(charts.memory.note, last?.memory_mb ? `${fmtMb(last.memory_mb.used)} of ${fmtMb(last.memory_mb.capacity)} used` : "");
    setText(charts.gpus.note, last?.gpus ? `${fmtCores(last.gpus.used)} of ${last.gpus.capacity} busy` : "");
    setText(charts.queue.note, last ? `${last.queued} queued · ${last.running} running` : "");
    setText(charts.throughput.note, `jobs per ${fmtDuration(history.step * 1000)}`);
  }

  return {
    el,
    render,
    unmount() {
      release();
      for (const c of Object.values(charts)) c.chart.destroy();
    },
  };
}

function card(key, title, chart) {
  const note = h("span.chart-note");
  const el = h(
    "figure.chart-card",
    { "data-chart": key },
    h("figcaption.chart-head", null, h("h3.chart-title", { text: title }), note),
    chart.el,
  );
  return { el, chart, note };
}
