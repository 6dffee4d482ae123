// Time-series charts (uPlot, vendored in /ui/vendor) and SVG sparklines.
//
// Colours come from CSS custom properties (charts.css), read when a chart is built;
// charts are built again when the colour scheme changes, since a canvas does not
// follow CSS. Each chart follows its box's width (ResizeObserver), so it resizes with
// the window and with the grid it sits in.

import uPlot from "../vendor/uPlot.esm.js";
import { fmtCores, fmtMb, h } from "./dom.js";

const DARK = window.matchMedia("(prefers-color-scheme: dark)");
const live = new Set();
DARK.addEventListener("change", () => {
  for (const chart of live) chart.rebuild();
});

/** The value of a CSS custom property on the page (a colour, a font). */
export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** A colour (#rgb, #rrggbb or rgb()) with this opacity. */
export function withAlpha(color, alpha) {
  let m = color.match(/^#([0-9a-f]{3})$/i);
  if (m) color = `#${[...m[1]].map((c) => c + c).join("")}`;
  m = color.match(/^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})/i);
  if (m) return `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${alpha})`;
  m = color.match(/^rgba?\(([^,]+),([^,]+),([^,)]+)/);
  if (m) return `rgba(${m[1].trim()}, ${m[2].trim()}, ${m[3].trim()}, ${alpha})`;
  return color;
}

// How each kind of figure is shown on an axis and in the legend.
const UNITS = {
  cores: { fmt: (v) => fmtCores(round(v)), incrs: null },
  mb: { fmt: (v) => fmtMb(Math.round(v)), incrs: powersOfTwo() },
  count: { fmt: (v) => String(Math.round(v)), incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000] },
  gpus: { fmt: (v) => fmtCores(round(v)), incrs: null },
  percent: { fmt: (v) => `${Math.round(v)}%`, incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400] },
};

function round(v) {
  return Math.round(v * 100) / 100;
}

function powersOfTwo() {
  const out = [];
  for (let e = 0; e <= 42; e++) out.push(2 ** e);
  return out;
}

/** The top of a y axis from zero: a little above the largest value, 1 when all are 0. */
function yTop(max) {
  if (!(max > 0)) return 1;
  const raw = max * 1.08;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= raw) return m * p;
  return raw;
}

/**
 * A time chart of several series sharing one y axis that starts at zero.
 *
 * series: [{label, color: "--css-var", kind: "line" | "area" | "dash" | "bars", align}]
 * unit: a key of UNITS; sync: charts with the same key share the cursor; window: a
 * function giving the x range [from, to] to show (else the data's own).
 */
export class TimeChart {
  constructor({ series, unit = "count", height = 170, sync = null, window = null, testid = null }) {
    this.series = series;
    this.window = window;
    this.unit = UNITS[unit];
    this.height = height;
    this.sync = sync;
    this.data = [[], ...series.map(() => [])];
    this.plot = null;
    this.width = 0;
    this.empty = h("div.chart-empty", { text: "No samples yet" });
    this.box = h("div.chart-plot");
    this.el = h("div.chart", { "data-testid": testid, "data-points": "0" }, this.box, this.empty);
    this.el.style.minHeight = `${height}px`;
    this.observer = new ResizeObserver((entries) => {
      const width = Math.floor(entries[entries.length - 1].contentRect.width);
      if (width <= 0 || width === this.width) return;
      this.width = width;
      if (this.plot) this.plot.setSize({ width, height: this.height });
      else this.build();
    });
    this.observer.observe(this.box);
    live.add(this);
  }

  /** data: [xs (Unix seconds), ys for each series, ...]; null leaves a gap. */
  setData(data) {
    this.data = data;
    const n = data[0].length;
    this.el.dataset.points = String(n);
    this.empty.hidden = n > 0;
    if (this.plot) this.plot.setData(data);
  }

  xRange(min, max) {
    const w = this.window && this.window();
    if (w && w[1] > w[0]) return w;
    if (min === null || max === null || min === undefined) return [0, 1];
    // One sample: a minute either side, so it is not drawn on the y axis.
    return min === max ? [min - 60, max + 60] : [min, max];
  }

  rebuild() {
    if (!this.plot) return;
    this.plot.destroy();
    this.plot = null;
    this.build();
  }

  build() {
    if (!this.width) return;
    const axis = cssVar("--chart-axis") || "#667085";
    const grid = cssVar("--chart-grid") || "#e3e8ef";
    const font = `11px ${cssVar("--font") || "system-ui, sans-serif"}`;
    const unit = this.unit;
    const series = this.series.map((s) => seriesOpts(s, unit));
    const opts = {
      width: this.width,
      height: this.height,
      class: "chart-uplot",
      cursor: {
        drag: { x: false, y: false, setScale: false },
        points: { size: 6 },
        ...(this.sync ? { sync: { key: this.sync } } : {}),
      },
      legend: { live: true },
      scales: {
        x: { time: true, range: (u, min, max) => this.xRange(min, max) },
        y: { range: (u, min, max) => [0, yTop(max)] },
      },
      axes: [
        {
          stroke: axis,
          font,
          grid: { stroke: grid, width: 1 },
          ticks: { stroke: grid, width: 1, size: 4 },
        },
        {
          stroke: axis,
          font,
          size: 56,
          grid: { stroke: grid, width: 1 },
          ticks: { show: false },
          values: (u, splits) => splits.map(unit.fmt),
          ...(unit.incrs ? { incrs: unit.incrs } : {}),
        },
      ],
      series: [{ label: "Time", value: (u, v, sidx, idx) => stamp(idx === null || idx === undefined ? latest(u.data[0]) : v) }, ...series],
    };
    this.plot = new uPlot(opts, this.data, this.box);
    this.el.dataset.scheme = DARK.matches ? "dark" : "light";
  }

  destroy() {
    this.observer.disconnect();
    live.delete(this);
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

const fmtStamp = uPlot.fmtDate("{MMM} {D}, {HH}:{mm}:{ss}");

function stamp(t) {
  return t === null || t === undefined ? "–" : fmtStamp(new Date(t * 1000));
}

function latest(values) {
  for (let i = (values || []).length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

function seriesOpts(s, unit) {
  const color = cssVar(s.color) || "#2563eb";
  const out = {
    label: s.label,
    stroke: color,
    width: s.kind === "dash" ? 1.25 : 1.75,
    // Away from the cursor the legend shows the latest figure.
    value: (u, v, sidx, idx) => {
      const shown = idx === null || idx === undefined ? latest(u.data[sidx]) : v;
      return shown === null || shown === undefined ? "–" : unit.fmt(shown);
    },
    points: { show: false },
    spanGaps: false,
  };
  if (s.kind === "dash") out.dash = [5, 4];
  if (s.kind === "area") out.fill = withAlpha(color, 0.16);
  if (s.kind === "bars") {
    out.paths = uPlot.paths.bars({ size: [0.4, 14, 1], align: s.align || 0 });
    out.fill = withAlpha(color, 0.75);
    out.width = 0;
  }
  return out;
}

// --- sparklines --------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// Node cards use SVG rather than a uPlot each: there may be hundreds of cards, and an
// SVG path in a stretched viewBox costs no canvas, no observer and follows CSS colours.
const VIEW_W = 200;
const VIEW_H = 40;

/**
 * A sparkline of fractions (0..1) over a time window: lines: [{cls, label}]; set() takes
 * {from, to, xs, ys: [[...], ...]}.
 */
export function sparkline(lines, { label = "" } = {}) {
  const root = svg("svg", {
    viewBox: `0 0 ${VIEW_W} ${VIEW_H}`,
    preserveAspectRatio: "none",
    class: "spark-svg",
    role: "img",
    "aria-label": label,
  });
  const paths = lines.map((l) => {
    const area = svg("path", { class: `spark-area ${l.cls}` });
    const line = svg("path", { class: `spark-line ${l.cls}`, "vector-effect": "non-scaling-stroke" });
    root.append(area, line);
    return { area, line };
  });
  let key = "";
  return {
    el: root,
    set({ from, to, xs, ys }) {
      const k = `${from}|${to}|${xs.length}|${xs[xs.length - 1]}|${ys.map((y) => y[y.length - 1]).join(",")}`;
      if (k === key) return;
      key = k;
      const span = Math.max(1e-9, to - from);
      const x = (t) => (((t - from) / span) * VIEW_W).toFixed(2);
      const y = (v) => ((1 - Math.max(0, Math.min(1, v))) * (VIEW_H - 2) + 1).toFixed(2);
      ys.forEach((vals, i) => {
        // A null (no figure from the node then) breaks the line.
        const runs = [];
        let run = [];
        xs.forEach((t, j) => {
          if (vals[j] === null || vals[j] === undefined || t < from) {
            if (run.length) runs.push(run);
            run = [];
          } else {
            run.push([x(t), y(vals[j])]);
          }
        });
        if (run.length) runs.push(run);
        const line = runs
          .map((r) => (r.length === 1 ? [r[0], [Math.min(VIEW_W, Number(r[0][0]) + 1.5).toFixed(2), r[0][1]]] : r))
          .map((r) => `M${r.map((p) => p.join(" ")).join("L")}`)
          .join("");
        const area = runs
          .filter((r) => r.length > 1)
          .map((r) => `M${r[0][0]} ${VIEW_H}L${r.map((p) => p.join(" ")).join("L")}L${r[r.length - 1][0]} ${VIEW_H}Z`)
          .join("");
        paths[i].line.setAttribute("d", line);
        paths[i].area.setAttribute("d", area);
      });
    },
  };
}
