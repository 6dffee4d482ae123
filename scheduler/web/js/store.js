// What the dashboard knows: stats, nodes, the loaded page of jobs and the job being
// looked at. Events patch it at once; loads from the API (throttled, so a burst of
// events costs one request per kind) bring back what events do not carry. Every
// record has the index of its last change, and an event is applied only when it is
// newer, so a load and the events around it can arrive in any order.
//
// Redraws are coalesced: changes mark parts dirty, and the views redraw once per
// animation frame.

import * as api from "./api.js";
import { TERMINAL } from "./dom.js";

//: one load per kind at most this often while events stream in
const SYNC_MS = 1000;
//: the nodes' heartbeat ages and metrics are refreshed this often without events
const POLL_MS = 5000;
//: jobs loaded per page of the table, and the most it loads
export const PAGE = 200;
export const MAX_JOBS = 1000;

export const state = {
  me: null,
  conn: "connecting",
  stats: null,
  nodes: new Map(),
  jobs: new Map(),
  jobsCursor: null,
  /** how many of the newest jobs the table loads ("Load more" raises it) */
  jobsLimit: PAGE,
  jobsLoaded: false,
  /** the tab of the job table: "" for all, or a job state */
  tab: "",
  /** the job on the job page */
  job: null,
  jobId: null,
  /** the job page's job does not exist (or no longer) */
  jobMissing: false,
  /** job arrays the table shows: id -> summary (counts by state, count, spec) */
  arrays: new Map(),
  /** the tasks of the arrays opened in the table: id -> [task, ...] */
  arrayTasks: new Map(),
};

const listeners = new Set();
const dirty = new Set();
let frame = 0;

/** fn(dirtyParts: Set<string>) runs at most once per animation frame. */
export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function touch(...parts) {
  for (const p of parts) dirty.add(p);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const parts = new Set(dirty);
  dirty.clear();
  for (const fn of listeners) {
    try {
      fn(parts);
    } catch (e) {
      console.error(e);
    }
  }
}

// --- loading ---------------------------------------------------------------------------

const loaders = {
  stats: async () => {
    state.stats = await api.getStats();
    touch("stats");
    return state.stats.index;
  },
  nodes: async () => {
    const { nodes, index } = await api.listNodes();
    const next = new Map();
    for (const n of nodes) {
      const mine = state.nodes.get(n.id);
      next.set(n.id, mine && mine.index > n.index ? mine : n);
    }
    state.nodes = next;
    touch("nodes");
    return index;
  },
  jobs: async () => {
    const tab = state.tab;
    const page = await api.listJobs({ state: tab || undefined, limit: state.jobsLimit });
    if (tab !== state.tab) return;
    const next = new Map();
    for (const j of page.jobs) {
      const mine = state.jobs.get(j.id);
      next.set(j.id, mine && mine.index > j.index ? mine : j);
    }
    state.jobs = next;
    state.jobsCursor = page.next_cursor;
    state.jobsLoaded = true;
    touch("jobs");
    // The arrays among them are shown as one row each, counted by their summaries.
    const arrays = new Set();
    for (const j of page.jobs) if (j.array_id) arrays.add(j.array_id);
    for (const id of [...arrays].slice(0, MAX_ARRAYS)) loadArray(id, { tasks: state.arrayTasks.has(id) });
    return page.index;
  },
  job: async () => {
    const id = state.jobId;
    if (!id) return;
    let job;
    try {
      job = await api.getJob(id);
    } catch (e) {
      if (e.status !== 404 || id !== state.jobId) throw e;
      state.jobMissing = true;
      touch("job");
      return;
    }
    if (id !== state.jobId) return;
    if (!state.job || state.job.id !== id || job.index >= state.job.index) state.job = job;
    touch("job");
    return job.index;
  },
};

const wanted = new Set();
const lastRun = new Map();
let syncTimer = 0;
let running = false;

/** Load these parts soon (at once if they were not loaded in the last SYNC_MS). */
export function want(...parts) {
  for (const p of parts) wanted.add(p);
  schedule();
}

function schedule() {
  if (syncTimer || running || !wanted.size) return;
  const now = performance.now();
  let wait = SYNC_MS;
  for (const p of wanted) wait = Math.min(wait, Math.max(0, (lastRun.get(p) || -SYNC_MS) + SYNC_MS - now));
  syncTimer = setTimeout(runSync, wait);
}

async function runSync() {
  syncTimer = 0;
  running = true;
  const now = performance.now();
  const due = [...wanted].filter((p) => now - (lastRun.get(p) || -SYNC_MS) >= SYNC_MS - 5);
  for (const p of due) {
    wanted.delete(p);
    lastRun.set(p, now);
  }
  try {
    await Promise.all(due.map((p) => loaders[p]().catch((e) => reportError(p, e))));
  } finally {
    running = false;
    schedule();
  }
}

function reportError(part, e) {
  // A 401 logs the page out; anything else is retried with the next event or poll,
  // and the connection indicator already says when the scheduler cannot be reached.
  if (e.status !== 401) console.warn(`loading ${part} failed: ${e.message}`);
}

/** Load everything now; resolves to the lowest index seen (where the stream starts). */
export async function loadAll() {
  const parts = ["stats", "nodes", "jobs"];
  if (state.jobId) parts.push("job");
  const now = performance.now();
  for (const p of parts) lastRun.set(p, now);
  const indexes = await Promise.all(parts.map((p) => loaders[p]()));
  // The job page's job carries the index of its own last change, not of the snapshot.
  const known = indexes.slice(0, 3).filter((i) => i > 0);
  return known.length ? Math.min(...known) : 0;
}

let pollTimer = 0;

export function startPolling() {
  stopPolling();
  pollTimer = setInterval(() => {
    if (document.visibilityState === "visible") want("nodes", "stats");
  }, POLL_MS);
}

export function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = 0;
}

export function setTab(tab) {
  if (state.tab === tab) return;
  state.tab = tab;
  state.jobsLimit = PAGE;
  state.jobsLoaded = false;
  touch("jobs");
  lastRun.delete("jobs");
  want("jobs");
}

export function loadMoreJobs() {
  state.jobsLimit = Math.min(MAX_JOBS, state.jobsLimit + PAGE);
  lastRun.delete("jobs");
  want("jobs");
}

export function openJob(id) {
  state.jobId = id;
  state.jobMissing = false;
  if (!state.job || state.job.id !== id) state.job = state.jobs.get(id) || null;
  touch("job");
  lastRun.delete("job");
  want("job");
}

export function closeJob() {
  state.jobId = null;
  state.job = null;
}

//: arrays whose summaries one load of the table refreshes at most
const MAX_ARRAYS = 20;
//: tasks of an opened array loaded at most
const MAX_TASKS = 1000;

/** Refresh an array's summary (and, with ``tasks``, its tasks, up to MAX_TASKS). */
export async function loadArray(id, { tasks = false } = {}) {
  const path = `/api/v1/arrays/${encodeURIComponent(id)}`;
  try {
    const [summary, page] = await Promise.all([
      api.get(path),
      tasks ? api.get(`/api/v1/jobs?${new URLSearchParams({ array: id, limit: String(MAX_TASKS) })}`) : null,
    ]);
    state.arrays.set(id, summary);
    if (page) state.arrayTasks.set(id, page.jobs);
  } catch (e) {
    reportError("arrays", e);
  }
  touch("jobs");
}

/** Close an opened array: its tasks are no longer kept. */
export function closeArray(id) {
  state.arrayTasks.delete(id);
  touch("jobs");
}

export function reset() {
  state.stats = null;
  state.arrays = new Map();
  state.arrayTasks = new Map();
  state.nodes = new Map();
  state.jobs = new Map();
  state.jobsLoaded = false;
  state.job = null;
  state.jobId = null;
}

// --- events ----------------------------------------------------------------------------

const endListeners = new Set();

/** fn(job, event) when a job reaches a terminal state. */
export function onJobEnd(fn) {
  endListeners.add(fn);
}

const typeListeners = new Map();

/** fn(event) for every event of this type (charts take samples this way); returns an unsubscribe. */
export function onEvent(type, fn) {
  if (!typeListeners.has(type)) typeListeners.set(type, new Set());
  typeListeners.get(type).add(fn);
  return () => typeListeners.get(type).delete(fn);
}

export function apply(event) {
  const { type, data = {}, job_id: jobId, node_id: nodeId } = event;
  for (const fn of typeListeners.get(type) || []) {
    try {
      fn(event);
    } catch (e) {
      console.error(e);
    }
  }
  // Usage samples change no job record: they must not advance its index past a load.
  if (type.startsWith("job.") && type !== "job.usage") {
    applyToJob(state.jobs.get(jobId), event);
    if (state.job && state.job.id === jobId && state.job !== state.jobs.get(jobId)) {
      applyToJob(state.job, event);
    }
    if (state.job && state.job.id === jobId) touch("job");
  }
  switch (type) {
    case "job.created":
      countStats(event, null, "queued");
      want("jobs");
      touch("jobs");
      break;
    case "job.state": {
      countStats(event, data.from, data.state);
      if (!state.jobs.has(jobId) && (!state.tab || state.tab === data.state)) want("jobs");
      // An array's row counts its tasks by state: the next load refreshes them.
      if (state.jobs.get(jobId)?.array_id) want("jobs");
      if (data.node_id || data.from === "assigned" || data.from === "running") want("nodes", "stats");
      if (state.job && state.job.id === jobId) want("job");
      touch("jobs");
      if (TERMINAL.has(data.state)) {
        // The error and the final figures come with the job itself, not the event.
        want("jobs");
        const job = state.jobs.get(jobId) || (state.job?.id === jobId ? state.job : null);
        for (const fn of endListeners) fn(job, event);
      }
      break;
    }
    case "job.progress":
    case "job.pending":
      touch("jobs");
      break;
    case "node.registered":
    case "node.forgotten":
      want("nodes", "stats");
      break;
    case "node.state": {
      const node = state.nodes.get(nodeId);
      if (node && event.index > node.index) {
        node.index = event.index;
        if ("draining" in data) {
          node.draining = data.draining;
          node.drain_reason = data.reason ?? null;
        } else {
          if (data.state) node.state = data.state;
          node.reason = data.reason ?? null;
        }
        touch("nodes");
      }
      want("nodes", "stats");
      break;
    }
    case "node.metrics": {
      const node = state.nodes.get(nodeId);
      if (node && event.index > node.index) {
        node.index = event.index;
        node.metrics = data;
        node.last_heartbeat_at = event.ts;
        touch("nodes");
      }
      break;
    }
    default:
      break;
  }
}

function applyToJob(job, event) {
  if (!job || event.index <= job.index) return;
  const data = event.data || {};
  job.index = event.index;
  if (event.type === "job.state") {
    job.state = data.state;
    job.reason = data.reason ?? null;
    job.pending = null;
    job.reservation = null;
    if (data.attempt) job.attempt = data.attempt;
    if (data.node_id) job.node_id = data.node_id;
    if (data.state === "queued") job.node_id = null;
    if (data.exit_code !== undefined) job.exit_code = data.exit_code;
    if (data.state === "running" && !job.started_at) job.started_at = event.ts;
    if (TERMINAL.has(data.state)) job.finished_at = event.ts;
    if (data.state === "queued" && data.from && TERMINAL.has(data.from)) {
      // A manual retry: a new attempt starts from scratch.
      job.finished_at = null;
      job.started_at = null;
      job.exit_code = null;
      job.progress = null;
    }
  } else if (event.type === "job.progress") {
    job.progress = { percent: data.percent, message: data.message || "" };
  } else if (event.type === "job.pending") {
    // Why a queued job waits, told when it changes, with its nodes counted by cause
    // and the node reserved for it.
    job.reason = data.reason ?? null;
    job.pending = data.pending ?? null;
    job.reservation = data.reservation ?? null;
  }
}

function countStats(event, from, to) {
  const stats = state.stats;
  if (!stats || event.index <= stats.index) return;
  stats.index = event.index;
  if (from && from in stats.jobs) stats.jobs[from] = Math.max(0, stats.jobs[from] - 1);
  if (to) stats.jobs[to] = (stats.jobs[to] || 0) + 1;
  if (to === "queued") stats.queue_depth += 1;
  if (from === "queued") stats.queue_depth = Math.max(0, stats.queue_depth - 1);
  touch("stats");
}
