// A job's CPU and memory over one attempt, against what it requested: loaded from
// GET /api/v1/jobs/{id}/usage and grown by `job.usage` events. Follows the current
// attempt unless an earlier one is picked.

import * as api from "../api.js";
import { TimeChart } from "../charts.js";
import { fmtCores, fmtMb, fmtPercent, h, keyed, setHidden, setText } from "../dom.js";
import { onEvent } from "../store.js";

export function usagePanel(jobId) {
  const sync = `job-usage-${jobId}`;
  const cpuChart = new TimeChart({
    series: [
      { label: "CPU", color: "--chart-used", kind: "area" },
      { label: "Requested", color: "--chart-capacity", kind: "dash" },
    ],
    unit: "percent",
    height: 180,
    sync,
    testid: "usage-cpu",
  });
  const memChart = new TimeChart({
    series: [
      { label: "Memory", color: "--chart-memory", kind: "area" },
      { label: "Limit", color: "--chart-capacity", kind: "dash" },
    ],
    unit: "mb",
    height: 180,
    sync,
    testid: "usage-memory",
  });
  const cpuNote = h("span.chart-note");
  const memNote = h("span.chart-note");
  const status = h("span.charts-status");
  // Not .select: the log's attempt picker is the page's one select.select.
  const select = h("select.usage-attempt", { "aria-label": "Attempt whose usage is shown", hidden: true, "data-testid": "usage-attempt" });
  const el = h(
    "section.panel.usage-panel",
    { hidden: true, "aria-labelledby": "usage-title", "data-testid": "job-usage" },
    h("div.panel-head", null, h("h2#usage-title", null, "Usage ", status), select),
    h(
      "div.usage-grid",
      null,
      h("figure.chart-card", { "data-chart": "cpu" }, h("figcaption.chart-head", null, h("h3.chart-title", { text: "CPU" }), cpuNote), cpuChart.el),
      h("figure.chart-card", { "data-chart": "memory" }, h("figcaption.chart-head", null, h("h3.chart-title", { text: "Memory" }), memNote), memChart.el),
    ),
  );

  let shown = null;
  let follow = true;
  let samples = [];
  let buffered = null;
  let seq = 0;
  let drawn = "";
  let lastJob = null;

  select.addEventListener("change", () => {
    const n = Number(select.value);
    follow = n === lastJob?.attempt;
    show(n);
  });

  async function show(attempt) {
    shown = attempt;
    samples = [];
    buffered = [];
    const mine = ++seq;
    setText(status, "loading…");
    redraw();
    let body = null;
    try {
      body = await api.get(`/api/v1/jobs/${encodeURIComponent(jobId)}/usage?${new URLSearchParams({ attempt: String(attempt) })}`);
    } catch (e) {
      if (mine !== seq) return;
      // An attempt not started yet has no samples (404); anything else is said.
      setText(status, e.status === 404 ? "" : `could not be loaded: ${e.message}`);
    }
    if (mine !== seq) return;
    if (body) setText(status, body.interval_s ? `every ${body.interval_s} s` : "");
    const early = buffered;
    buffered = null;
    samples = body?.samples || [];
    for (const s of early) add(s);
    redraw();
  }

  function add(sample) {
    const last = samples[samples.length - 1];
    if (!last || sample.t > last.t) samples.push(sample);
  }

  const unsubscribe = onEvent("job.usage", (event) => {
    const data = event.data || {};
    if (event.job_id !== jobId || data.attempt !== shown) return;
    for (const s of data.samples || []) {
      if (buffered) buffered.push(s);
      else add(s);
    }
    if (!buffered) redraw();
  });

  function redraw() {
    const job = lastJob;
    const res = job?.spec?.resources || {};
    const key = `${shown}|${samples.length}|${samples[samples.length - 1]?.t}|${res.cpu}|${res.memory_mb}`;
    if (key === drawn) return;
    drawn = key;
    el.dataset.attempt = String(shown ?? "");
    el.dataset.samples = String(samples.length);
    const xs = samples.map((s) => s.t);
    const cpuReq = res.cpu ? res.cpu * 100 : null;
    const memReq = res.memory_mb || null;
    cpuChart.setData([xs, samples.map((s) => s.cpu_percent), xs.map(() => cpuReq)]);
    memChart.setData([xs, samples.map((s) => s.memory_mb), xs.map(() => memReq)]);
    const last = samples[samples.length - 1];
    const peak = samples.reduce((m, s) => Math.max(m, s.memory_mb || 0), 0);
    setText(cpuNote, last ? `${fmtPercent(last.cpu_percent)} now · ${fmtCores(res.cpu)} ${res.cpu === 1 ? "core" : "cores"} requested (100% = one core)` : "");
    setText(memNote, last ? `${fmtMb(Math.round(last.memory_mb))} now · peak ${fmtMb(Math.round(peak))} of ${fmtMb(res.memory_mb)}` : "");
  }

  return {
    el,
    render(job) {
      lastJob = job;
      const ran = Boolean(job.started_at) || job.attempt > 1 || (job.attempts || []).length > 0;
      setHidden(el, !ran && samples.length === 0);
      const options = [];
      for (let n = job.attempt; n >= 1; n--) options.push(n);
      keyed(
        select,
        options,
        (n) => n,
        (n) => h("option", { value: String(n) }),
        (opt, n) => setText(opt, n === job.attempt ? `Attempt ${n} (current)` : `Attempt ${n}`),
      );
      setHidden(select, job.attempt <= 1);
      if (!ran) return;
      if (shown === null || (follow && shown !== job.attempt)) show(job.attempt);
      if (select.value !== String(shown)) select.value = String(shown);
      redraw();
    },
    unmount() {
      seq += 1;
      unsubscribe();
      cpuChart.destroy();
      memChart.destroy();
    },
  };
}
