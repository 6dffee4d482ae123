// Job arrays: a list of the arrays among the newest jobs, and a page per array with its
// tasks counted by state, its progress, every task, and the actions `berth array` has
// (cancel, retry failed, retry every ended task, pause, resume).
//
// The scheduler has no listing of arrays: an array is found through its tasks, so the
// list covers the arrays with a task among the newest MAX_JOBS jobs.

import * as api from "../api.js";
import {
  STATE_LABEL,
  fmtAgo,
  fmtCores,
  fmtCount,
  fmtDuration,
  fmtMb,
  fmtTime,
  h,
  jobDuration,
  keyed,
  pill,
  setHidden,
  setPill,
  setText,
  setWidth,
} from "../dom.js";
import { can } from "../roles.js";
import { state } from "../store.js";
import { toast } from "../toast.js";

//: the newest jobs searched for arrays
const MAX_JOBS = 1000;
//: arrays listed at most (one summary request each)
const MAX_ARRAYS = 50;
//: tasks an array page lists at most
const MAX_TASKS = 1000;
//: an array's page reloads at most this often while events say its tasks change, and
//: the list (a thousand jobs and a summary per array) at most this often
const RELOAD_MS = 1000;
const LIST_RELOAD_MS = 3000;
//: and at least this often without events (a stream down, a task deleted)
const POLL_MS = 10000;

const ORDER = ["queued", "assigned", "running", "paused", "completed", "failed", "cancelled", "timed_out"];

const ACTIONS = [
  { action: "cancel", label: "Cancel", testid: "array-cancel", cls: "btn-danger", body: {}, done: "cancelled" },
  { action: "retry", label: "Retry failed", testid: "array-retry", cls: "btn-outline", body: { failed_only: true }, done: "queued again" },
  { action: "retry", label: "Retry all ended", testid: "array-retry-all", cls: "btn-ghost", body: { failed_only: false }, done: "queued again" },
  { action: "pause", label: "Pause", testid: "array-pause", cls: "btn-ghost", body: {}, done: "paused" },
  { action: "resume", label: "Resume", testid: "array-resume", cls: "btn-ghost", body: {}, done: "resumed" },
];

function ended(counts) {
  return (counts.completed || 0) + (counts.failed || 0) + (counts.cancelled || 0) + (counts.timed_out || 0);
}

function countsText(counts) {
  return ORDER.filter((s) => counts[s]).map((s) => `${fmtCount(counts[s])} ${STATE_LABEL[s].toLowerCase()}`).join(" · ") || "–";
}

/** A stacked bar of the tasks by state. */
function stateBar() {
  const el = h("div.state-bar", { role: "img" });
  const parts = new Map(ORDER.map((s) => [s, h(`span.state-seg.seg-${s}`)]));
  el.append(...parts.values());
  return {
    el,
    set(counts, total) {
      for (const [s, seg] of parts) setWidth(seg, total ? (counts[s] || 0) / total : 0);
      el.setAttribute("aria-label", countsText(counts));
      el.title = countsText(counts);
    },
  };
}

/**
 * Reload at most every ``minMs`` when asked, and every POLL_MS anyway; one load at a
 * time, so an older answer never lands after a newer one.
 */
function reloader(load, minMs) {
  let last = 0;
  let timer = 0;
  let stopped = false;
  let running = false;
  let again = false;
  const run = async () => {
    timer = 0;
    if (running) {
      again = true;
      return;
    }
    running = true;
    last = performance.now();
    try {
      await load();
    } finally {
      running = false;
    }
    if (again) {
      again = false;
      soon();
    }
  };
  const soon = () => {
    if (stopped || timer) return;
    timer = setTimeout(run, Math.max(0, last + minMs - performance.now()));
  };
  const poll = setInterval(() => {
    if (document.visibilityState === "visible" && state.me) run();
  }, POLL_MS);
  run();
  return {
    soon,
    stop() {
      stopped = true;
      clearTimeout(timer);
      clearInterval(poll);
    },
  };
}

// --- the list --------------------------------------------------------------------------

export function arraysView(container) {
  document.title = "Arrays · Berth";
  const body = h("tbody");
  const empty = h(
    "div.empty",
    { hidden: true },
    h("strong", { text: "No arrays among the newest jobs." }),
    " Submit one with ",
    h("code", { text: "berth submit --array 0-99%10 IMAGE -- CMD" }),
  );
  const error = h("div.callout.callout-error", { hidden: true });
  const el = h(
    "div.page",
    null,
    h(
      "div.admin-head",
      null,
      h("h1", { text: "Arrays" }),
      h("p.muted.admin-lead", { text: `Job arrays with a task among the newest ${fmtCount(MAX_JOBS)} jobs.` }),
    ),
    error,
    h(
      "section.panel",
      null,
      empty,
      h(
        "div.table-wrap",
        null,
        h(
          "table.admin-table",
          { "data-testid": "arrays-table" },
          h(
            "thead",
            null,
            h("tr", null, ...["Array", "Tasks", "States", "Done", "Image", "Owner", "Submitted"].map((t) => h("th", { text: t }))),
          ),
          body,
        ),
      ),
    ),
  );
  container.replaceChildren(el);
  let arrays = [];
  let loaded = false;

  async function load() {
    try {
      const page = await api.listJobs({ limit: MAX_JOBS });
      const ids = [];
      for (const j of page.jobs) if (j.array_id && !ids.includes(j.array_id)) ids.push(j.array_id);
      const found = await Promise.all(
        ids.slice(0, MAX_ARRAYS).map((id) =>
          api.get(`/api/v1/arrays/${encodeURIComponent(id)}`).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
        ),
      );
      arrays = found.filter(Boolean);
      loaded = true;
      setHidden(error, true);
    } catch (e) {
      if (e.status === 401) return;
      setText(error, `Could not list the arrays: ${e.message}`);
      setHidden(error, false);
    }
    render();
  }

  function render() {
    setHidden(empty, !loaded || arrays.length > 0);
    keyed(body, arrays, (a) => a.id, createRow, updateRow);
  }

  function createRow() {
    const refs = {
      name: h("a.job-name"),
      id: h("div.job-id.mono"),
      count: h("td.col-num"),
      counts: h("div.cell-sub", { "data-testid": "array-counts" }),
      bar: stateBar(),
      done: h("td.col-num"),
      image: h("td.col-image.mono"),
      owner: h("td"),
      created: h("td.col-time"),
    };
    const row = h(
      "tr",
      { "data-testid": "array-row" },
      h("td.col-job", null, refs.name, refs.id),
      refs.count,
      h("td.col-states", null, refs.bar.el, refs.counts),
      refs.done,
      refs.image,
      refs.owner,
      refs.created,
    );
    row._refs = refs;
    return row;
  }

  function updateRow(row, a) {
    const r = row._refs;
    row.dataset.array = a.id;
    setText(r.name, a.name || "(unnamed array)");
    r.name.href = `#/arrays/${encodeURIComponent(a.id)}`;
    setText(r.id, a.id);
    setText(r.count, fmtCount(a.count));
    r.bar.set(a.counts, a.count);
    setText(r.counts, countsText(a.counts));
    setText(r.done, a.count ? `${Math.round((100 * ended(a.counts)) / a.count)}%` : "–");
    setText(r.image, a.spec.image);
    setText(r.owner, a.owner || "–");
    setText(r.created, fmtAgo(a.created_at));
    r.created.title = fmtTime(a.created_at);
  }

  const loader = reloader(load, LIST_RELOAD_MS);
  return {
    render(parts) {
      if (parts.has("jobs")) loader.soon();
    },
    unmount() {
      loader.stop();
    },
  };
}

// --- one array -------------------------------------------------------------------------

export function arrayView(container, id) {
  document.title = `Array ${id} · Berth`;
  const title = h("h1.job-title");
  const meta = h("div.job-meta");
  const bar = stateBar();
  const pct = h("span.progress-big-pct", { "data-testid": "array-percent" });
  const counts = h("div.array-state-counts", { "data-testid": "array-state-counts" });
  const details = h("dl.details");
  const tasksBody = h("tbody");
  const tasksNote = h("div.panel-foot.muted");
  const missing = h(
    "div.empty-page",
    { hidden: true },
    h("h2", { text: "No such array" }),
    h("p", { text: `There is no array ${id}, or it is not yours.` }),
  );
  const buttons = ACTIONS.map((a) =>
    h(`button.btn.${a.cls}`, { type: "button", "data-testid": a.testid, text: a.label, onclick: () => act(a) }),
  );
  const actions = h("div.job-actions", { hidden: !can("act") }, ...buttons);
  const page = h(
    "div.page-body",
    { hidden: true },
    h("div.job-head", null, h("div.job-head-main", null, h("div.job-title-row", null, title), meta), actions),
    h(
      "section.panel.progress-panel",
      null,
      h("div.progress-head", null, h("span.progress-label", { text: "Tasks ended" }), pct),
      bar.el,
      counts,
    ),
    h("section.panel", null, h("div.panel-head", null, h("h2", { text: "What its tasks run" })), details),
    h(
      "section.panel",
      null,
      h("div.panel-head", null, h("h2", { text: "Tasks" })),
      h(
        "div.table-wrap",
        null,
        h(
          "table.admin-table.jobs",
          { "data-testid": "array-tasks" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              ...["Task", "State", "Node", "Attempt", "Progress", "Exit", "Duration"].map((t) => h("th", { text: t })),
            ),
          ),
          tasksBody,
        ),
      ),
      tasksNote,
    ),
  );
  container.replaceChildren(h("div.page", null, h("a.back", { href: "#/arrays" }, "← Arrays"), missing, page));
  let summary = null;
  let tasks = [];

  async function load() {
    try {
      const [s, list] = await Promise.all([
        api.get(`/api/v1/arrays/${encodeURIComponent(id)}`),
        api.get(`/api/v1/jobs?${new URLSearchParams({ array: id, limit: String(MAX_TASKS) })}`),
      ]);
      summary = s;
      tasks = list.jobs.sort((a, b) => a.array_index - b.array_index);
    } catch (e) {
      if (e.status === 404 || e.status === 403) {
        setHidden(missing, false);
        setHidden(page, true);
      } else if (e.status !== 401) {
        toast(`Could not load array ${id}: ${e.message}`, "error");
      }
      return;
    }
    render();
  }

  function render() {
    const s = summary;
    setHidden(page, false);
    setHidden(missing, true);
    document.title = `${s.name || `Array ${id}`} · Berth`;
    setText(title, s.name || "(unnamed array)");
    const limit = s.max_concurrent ? `, at most ${fmtCount(s.max_concurrent)} at once` : "";
    setText(meta, `array ${s.id} · ${fmtCount(s.count)} tasks${limit} · by ${s.owner || "–"} · ${fmtAgo(s.created_at)}`);
    meta.title = fmtTime(s.created_at);
    bar.set(s.counts, s.count);
    const done = ended(s.counts);
    setText(pct, `${fmtCount(done)} / ${fmtCount(s.count)} · ${s.count ? Math.round((100 * done) / s.count) : 0}%`);
    keyed(
      counts,
      ORDER.filter((st) => s.counts[st]),
      (st) => st,
      (st) => h("span.array-count", { "data-state": st }, pill(st), h("b")),
      (el, st) => setText(el.querySelector("b"), fmtCount(s.counts[st])),
    );
    const spec = s.spec;
    const command = spec.command === null || spec.command === undefined ? "the image's own" : Array.isArray(spec.command) ? JSON.stringify(spec.command) : spec.command;
    const rows = [
      ["Image", spec.image],
      ["Command", command],
      ["Resources", `${fmtCores(spec.resources.cpu)} CPU · ${fmtMb(spec.resources.memory_mb)}${spec.resources.gpus ? ` · ${spec.resources.gpus} GPU` : ""}`],
      ["Concurrency group", s.group || "–"],
    ];
    if (s.kept !== s.count) rows.push(["Kept", `${fmtCount(s.kept)} (the rest were deleted by retention)`]);
    details.replaceChildren(...rows.map(([k, v]) => h("div.detail", null, h("dt", { text: k }), h("dd.mono", { text: v }))));
    // Only what applies to some task may be pressed.
    const c = s.counts;
    const live = (c.queued || 0) + (c.assigned || 0) + (c.running || 0) + (c.paused || 0);
    const applies = {
      cancel: live > 0,
      retry: (c.failed || 0) + (c.cancelled || 0) + (c.timed_out || 0) > 0,
      pause: (c.running || 0) > 0,
      resume: (c.paused || 0) > 0,
    };
    ACTIONS.forEach((a, i) => {
      buttons[i].disabled = !(a.action === "retry" && !a.body.failed_only ? done > 0 : applies[a.action]);
    });
    keyed(tasksBody, tasks, (t) => t.id, createTask, updateTask);
    setText(tasksNote, tasks.length < s.kept ? `Showing the first ${fmtCount(tasks.length)} of ${fmtCount(s.kept)} tasks` : "");
  }

  function createTask() {
    const refs = {
      link: h("a.job-name"),
      id: h("div.job-id.mono"),
      pill: pill("queued"),
      node: h("td.col-node"),
      attempt: h("td.col-num"),
      bar: h("span.bar-fill"),
      pct: h("span.progress-pct"),
      exit: h("td.col-num"),
      duration: h("td.col-time"),
    };
    const row = h(
      "tr",
      { "data-testid": "array-task" },
      h("td.col-job", null, refs.link, refs.id),
      h("td.col-state", null, refs.pill),
      refs.node,
      refs.attempt,
      h("td.col-progress", null, h("div.mini-progress", null, h("div.bar.bar-thin", null, refs.bar), refs.pct)),
      refs.exit,
      refs.duration,
    );
    row._refs = refs;
    return row;
  }

  function updateTask(row, t) {
    const r = row._refs;
    row.dataset.job = t.id;
    row.dataset.state = t.state;
    setText(r.link, `task ${t.array_index}`);
    r.link.href = `#/jobs/${encodeURIComponent(t.id)}`;
    setText(r.id, t.id);
    setPill(r.pill, t.state);
    r.pill.title = t.reason || "";
    const node = t.node_id ? state.nodes.get(t.node_id) : null;
    setText(r.node, node ? node.name : t.node_id || "–");
    setText(r.attempt, t.attempt || "–");
    const p = t.state === "completed" ? 100 : t.progress?.percent;
    setWidth(r.bar, (p || 0) / 100);
    setText(r.pct, p === undefined || p === null ? "" : `${Math.round(p)}%`);
    setText(r.exit, t.exit_code === null || t.exit_code === undefined ? "–" : t.exit_code);
    const d = jobDuration(t);
    setText(r.duration, d === null ? "–" : fmtDuration(d));
  }

  async function act(a) {
    for (const b of buttons) b.disabled = true;
    try {
      const { results } = await api.post(`/api/v1/arrays/${encodeURIComponent(id)}/${a.action}`, a.body);
      const refused = results.filter((r) => !r.ok);
      const changed = results.length - refused.length;
      if (!results.length) toast(`No task to ${a.action}`, "warn");
      else
        toast(
          `${fmtCount(changed)} task${changed === 1 ? "" : "s"} ${a.done}${refused.length ? `; ${fmtCount(refused.length)} refused: ${refused[0].error?.message || "refused"}` : ""}`,
          refused.length ? "warn" : "success",
        );
    } catch (e) {
      toast(`Could not ${a.action} the array: ${e.message}`, "error");
    }
    await load();
  }

  const loader = reloader(load, RELOAD_MS);
  return {
    render(parts) {
      if (parts.has("jobs") || parts.has("job")) loader.soon();
      if (parts.has("nodes") && summary) render();
    },
    unmount() {
      loader.stop();
    },
  };
}
