// The cluster's history for the overview charts and the node sparklines: loaded from
// GET /api/v1/stats/history for the chosen range, then grown by the `stats.sample`
// events the scheduler sends every history interval.
//
// Stored points are steps `step` seconds wide. Live samples are gathered into steps of
// the same width, so a 7-day chart gets one point per step and not one per sample:
// gauges (queue, running, capacity, use) are averaged over the step, counters (started,
// ended) add up.

import * as api from "./api.js";
import { onEvent, touch } from "./store.js";

export const RANGES = [
  ["15m", 15 * 60],
  ["1h", 3600],
  ["6h", 6 * 3600],
  ["24h", 24 * 3600],
  ["7d", 7 * 86400],
];
const RANGE_S = new Map(RANGES);
const STORAGE_KEY = "berth.chartRange";
//: a gap in the samples this many steps long means events were missed: load again
const GAP_STEPS = 4;
//: loads after a gap at most this often
const RELOAD_MS = 15000;

export const history = {
  range: RANGE_S.has(stored()) ? stored() : "1h",
  loaded: false,
  loading: false,
  error: null,
  since: 0,
  until: 0,
  step: 10,
  /** cluster points (P of the contract), oldest first */
  points: [],
  /** node id -> {name, points: [N...]} */
  nodes: new Map(),
};

function stored() {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

/** The range's length in seconds. */
export function rangeSeconds(range = history.range) {
  return RANGE_S.get(range) || 3600;
}

/** The end of the window: the newest figure the scheduler sent (its clock, not ours). */
export function windowEnd() {
  const last = history.points[history.points.length - 1];
  return Math.max(history.until, last ? last.t : 0);
}

let seq = 0;
let buffered = null;
let lastSampleT = 0;
let interval = 0;
let lastReload = 0;
let users = 0;

/** Load the history for a range (and keep it as the choice). */
export async function load(range = history.range) {
  if (!RANGE_S.has(range)) range = "1h";
  if (range !== history.range) {
    history.range = range;
    try {
      localStorage.setItem(STORAGE_KEY, range);
    } catch {
      // Private windows may refuse storage: the choice lasts this page only.
    }
  }
  const mine = ++seq;
  buffered = [];
  history.loading = true;
  touch("history");
  try {
    const body = await api.get(`/api/v1/stats/history?${new URLSearchParams({ since: range })}`);
    if (mine !== seq) return;
    history.since = body.since;
    history.until = body.until;
    history.step = body.step || 10;
    history.points = body.points || [];
    history.nodes = new Map((body.nodes || []).map((n) => [n.id, { name: n.name, points: n.points || [] }]));
    history.error = null;
    const early = buffered;
    buffered = null;
    for (const sample of early) add(sample);
  } catch (e) {
    if (mine !== seq) return;
    buffered = null;
    history.error = e;
    if (e.status !== 401) console.warn(`loading the history failed: ${e.message}`);
  } finally {
    if (mine === seq) {
      history.loading = false;
      history.loaded = true;
      touch("history");
    }
  }
}

/**
 * The overview holds the history while it is shown: the first user loads it, and
 * samples are kept only while someone looks.
 */
export function use() {
  users += 1;
  if (users === 1) load();
  return () => {
    users = Math.max(0, users - 1);
  };
}

onEvent("stats.sample", (event) => {
  if (!users) return;
  const sample = event.data || {};
  if (typeof sample.t !== "number") return;
  if (buffered) {
    buffered.push(sample);
    return;
  }
  if (history.loaded && !history.error) {
    const last = history.points[history.points.length - 1];
    const gap = last ? sample.t - last.t : 0;
    if (gap > GAP_STEPS * Math.max(history.step, interval) && performance.now() - lastReload > RELOAD_MS) {
      lastReload = performance.now();
      load();
      return;
    }
  }
  add(sample);
  touch("history");
});

function add(sample) {
  if (sample.t <= history.until) return;
  if (lastSampleT && sample.t > lastSampleT) interval = sample.t - lastSampleT;
  lastSampleT = sample.t;
  const { nodes = [], ...point } = sample;
  merge(history.points, point, ["started", "ended"]);
  for (const n of nodes) {
    let entry = history.nodes.get(n.id);
    if (!entry) {
      entry = { name: n.name, points: [] };
      history.nodes.set(n.id, entry);
    }
    entry.name = n.name || entry.name;
    merge(entry.points, { t: sample.t, cpu: n.cpu, memory_mb: n.memory_mb, gpus: n.gpus }, []);
  }
  trim();
}

// Stored steps start at multiples of the step, gauges averaged and counters summed over
// it (scheduler/history.py); a live sample joins the step it falls in the same way.
// Where the step is about the sampling interval every sample is a point of its own.
function merge(points, p, counters) {
  const last = points[points.length - 1];
  const fine = interval > 0 && history.step < 2 * interval;
  const start = fine ? p.t : Math.floor(p.t / history.step) * history.step;
  if (last && !fine && last.t >= start) {
    last.n = (last.n || 1) + 1;
    for (const [k, v] of Object.entries(p)) {
      if (k === "t") continue;
      last[k] = counters.includes(k) ? (last[k] || 0) + (v || 0) : average(last[k], v, last.n);
    }
    return;
  }
  points.push({ ...p, t: start, n: 1 });
}

/** The running mean of numbers, also inside objects ({capacity, allocated, used}). */
function average(old, v, n) {
  if (typeof v === "number") return typeof old === "number" ? old + (v - old) / n : v;
  if (v && typeof v === "object") {
    const out = { ...(old && typeof old === "object" ? old : {}) };
    for (const k of Object.keys(v)) out[k] = average(out[k], v[k], n);
    return out;
  }
  return v;
}

function trim() {
  const from = windowEnd() - rangeSeconds();
  const drop = (points) => {
    let i = 0;
    while (i < points.length && points[i].t < from) i++;
    if (i) points.splice(0, i);
  };
  drop(history.points);
  for (const [id, entry] of history.nodes) {
    drop(entry.points);
    if (!entry.points.length) history.nodes.delete(id);
  }
}
