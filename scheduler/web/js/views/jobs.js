// The job table: status tabs, a text filter, newest first, selection with Cancel and
// Retry for the selected jobs. The tasks of a job array share one row (its id, name and
// tasks counted by state), which opens to list them.

import * as api from "../api.js";
import {
  STATE_LABEL,
  TERMINAL,
  fmtAgo,
  fmtCores,
  fmtCount,
  fmtDuration,
  fmtMb,
  fmtTime,
  h,
  icon,
  jobDuration,
  keyed,
  pill,
  setHidden,
  setPill,
  setText,
  setWidth,
} from "../dom.js";
import { ACTION_FROM, actOnMany, canAct, mayChangeJobs, maySubmit, summarise } from "../jobactions.js";
import { MAX_JOBS, closeArray, loadArray, loadMoreJobs, setTab, state, want } from "../store.js";
import { toast } from "../toast.js";

const TABS = ["", "queued", "assigned", "running", "paused", "completed", "failed", "cancelled", "timed_out"];
const CAN_CANCEL = ACTION_FROM.cancel;
//: rows shown at first, and added by "Show more"
const ROWS = 50;
//: an array's name opens it: a button that looks like the jobs' name links
const LINKLIKE = {
  background: "none",
  border: "0",
  padding: "0",
  fontFamily: "inherit",
  fontSize: "inherit",
  color: "inherit",
  cursor: "pointer",
};

export function jobTable() {
  const selected = new Set();
  //: the arrays opened to show their tasks
  const opened = new Set();
  let filter = "";
  let shownRows = ROWS;

  const tabs = TABS.map((t) => {
    const count = h("span.tab-count");
    const el = h(
      "button.tab",
      {
        type: "button",
        role: "tab",
        "data-tab": t || "all",
        onclick: () => {
          shownRows = ROWS;
          setTab(t);
        },
      },
      t ? STATE_LABEL[t] : "All",
      count,
    );
    return { t, el, count };
  });

  const search = h("input.search-input", {
    type: "search",
    placeholder: "Filter by name, id or image",
    "aria-label": "Filter jobs by name, id or image",
    "data-testid": "job-filter",
  });
  search.addEventListener("input", () => {
    filter = search.value.trim().toLowerCase();
    shownRows = ROWS;
    render();
  });

  const selCount = h("span.sel-count");
  const cancelBtn = h(
    "button.btn.btn-danger-outline.btn-sm",
    { type: "button", "data-testid": "cancel-selected", onclick: () => act("cancel") },
    icon("x"),
    "Cancel",
  );
  const retryBtn = h(
    "button.btn.btn-outline.btn-sm",
    { type: "button", "data-testid": "retry-selected", onclick: () => act("retry") },
    icon("retry"),
    "Retry",
  );
  const pauseBtn = h(
    "button.btn.btn-outline.btn-sm",
    { type: "button", "data-testid": "pause-selected", onclick: () => act("pause") },
    "Pause",
  );
  const resumeBtn = h(
    "button.btn.btn-outline.btn-sm",
    { type: "button", "data-testid": "resume-selected", onclick: () => act("resume") },
    "Resume",
  );
  const submitLink = h("a.btn.btn-primary.btn-sm.new-job", { href: "#/submit", "data-testid": "new-job", hidden: true }, "Submit a job");
  const clearBtn = h("button.btn.btn-ghost.btn-sm", { type: "button", onclick: () => clearSelection() }, "Clear");

  const all = h("input", { type: "checkbox", "aria-label": "Select every job shown" });
  all.addEventListener("change", () => {
    const shown = visibleJobs();
    if (all.checked) for (const j of shown) selected.add(j.id);
    else for (const j of shown) selected.delete(j.id);
    render();
  });

  const body = h("tbody");
  const table = h(
    "table.jobs",
    { "data-testid": "jobs-table" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th.col-check", null, all),
        h("th", { text: "Job" }),
        h("th", { text: "State" }),
        h("th.col-image", { text: "Image" }),
        h("th.col-progress", { text: "Progress" }),
        h("th.col-node", { text: "Node" }),
        h("th.col-num", { text: "Attempt" }),
        h("th.col-res", { text: "Requests" }),
        h("th.col-time", { text: "Submitted" }),
        h("th.col-time", { text: "Duration" }),
      ),
    ),
    body,
  );
  const wrap = h("div.table-wrap", null, table);
  const empty = h("div.empty.empty-table", { hidden: true });
  const loading = h("div.empty.loading", { text: "Loading jobs…" });
  const more = h("button.btn.btn-outline.btn-sm", { type: "button", onclick: showMore });
  const shownNote = h("span.muted");

  const el = h(
    "section.panel.jobs-panel",
    { "aria-labelledby": "jobs-title" },
    h(
      "div.panel-head",
      null,
      h("h2#jobs-title", { text: "Jobs" }),
      submitLink,
      h("div.search", null, icon("search"), search),
    ),
    h("div.tabs", { role: "tablist" }, ...tabs.map((t) => t.el)),
    h(
      "div.toolbar",
      null,
      selCount,
      h("div.toolbar-actions", null, clearBtn, pauseBtn, resumeBtn, retryBtn, cancelBtn),
    ),
    wrap,
    loading,
    empty,
    h("div.panel-foot", null, shownNote, more),
  );

  function visibleJobs() {
    const jobs = [];
    for (const j of state.jobs.values()) {
      if (state.tab && j.state !== state.tab) continue;
      if (filter && !matches(j, filter)) continue;
      jobs.push(j);
    }
    jobs.sort((a, b) => (a.created_at === b.created_at ? (a.id < b.id ? 1 : -1) : a.created_at < b.created_at ? 1 : -1));
    return jobs;
  }

  function render() {
    const stats = state.stats;
    for (const t of tabs) {
      const active = t.t === state.tab;
      t.el.classList.toggle("active", active);
      t.el.setAttribute("aria-selected", String(active));
      const n = !stats ? null : t.t ? stats.jobs[t.t] || 0 : Object.values(stats.jobs).reduce((a, b) => a + b, 0);
      setText(t.count, n === null ? "" : fmtCount(n));
    }
    const jobs = visibleJobs();
    // Forget selected jobs that are gone from the list altogether.
    for (const id of selected) if (!state.jobs.has(id)) selected.delete(id);
    const allRows = tableRows(jobs);
    const rows = allRows.slice(0, shownRows);
    // Jobs the rows show: an array's row stands for its loaded tasks.
    const shown = rows.reduce((n, r) => n + (r.array ? r.tasks.length : r.task ? 0 : 1), 0);
    keyed(
      body,
      rows,
      (r) => r.key,
      (r) => (r.array ? createArrayRow(r) : createRow(r.job)),
      (row, r) => {
        if (r.array) {
          updateArrayRow(row, r, opened.has(r.array));
          return;
        }
        updateRow(row, r.job, selected);
        row.classList.toggle("array-task", Boolean(r.task));
        row.querySelector(".col-job").style.paddingLeft = r.task ? "2em" : "";
      },
    );
    const shownSelected = jobs.filter((j) => selected.has(j.id)).length;
    all.checked = jobs.length > 0 && shownSelected === jobs.length;
    all.indeterminate = shownSelected > 0 && shownSelected < jobs.length;

    // What this login may not do is not offered; the scheduler refuses it anyway.
    const mayChange = mayChangeJobs(state.me);
    const chosen = [...selected].map((id) => state.jobs.get(id)).filter(Boolean);
    cancelBtn.disabled = !chosen.some((j) => CAN_CANCEL.has(j.state));
    retryBtn.disabled = !chosen.some((j) => TERMINAL.has(j.state) && j.state !== "completed");
    pauseBtn.disabled = !chosen.some((j) => canAct("pause", j));
    resumeBtn.disabled = !chosen.some((j) => canAct("resume", j));
    for (const btn of [cancelBtn, retryBtn, pauseBtn, resumeBtn]) setHidden(btn, !mayChange);
    setHidden(submitLink, !maySubmit(state.me));
    clearBtn.hidden = selected.size === 0;
    const hint = mayChange ? "Select jobs to pause, resume, cancel or retry them" : "";
    setText(selCount, selected.size ? `${selected.size} selected` : hint);
    selCount.classList.toggle("muted", selected.size === 0);

    setHidden(loading, state.jobsLoaded);
    const none = state.jobsLoaded && jobs.length === 0;
    setHidden(empty, !none);
    setHidden(wrap, !state.jobsLoaded || none);
    if (none) {
      if (filter) setText(empty, `No loaded job matches “${search.value.trim()}”.`);
      else if (state.tab) setText(empty, `No ${STATE_LABEL[state.tab].toLowerCase()} jobs.`);
      else {
        empty.replaceChildren(
          h("strong", { text: "No jobs yet." }),
          " Submit one: ",
          h("code", { text: "berth run busybox -- echo hello" }),
        );
      }
    }
    const loadedAll = state.jobsCursor === null || state.jobs.size >= MAX_JOBS;
    setHidden(more, !state.jobsLoaded || (rows.length >= allRows.length && (loadedAll || filter)));
    setText(more, rows.length < allRows.length ? "Show more" : "Load older jobs");
    const kind = state.tab ? `${STATE_LABEL[state.tab].toLowerCase()} ` : "";
    setText(
      shownNote,
      state.jobsLoaded && jobs.length
        ? `Showing ${fmtCount(shown)} of ${fmtCount(jobs.length)} ${filter ? "matching " : ""}${kind}jobs${loadedAll ? "" : " loaded"}`
        : "",
    );
  }

  /** One row per job, but one per array for its tasks (with them below it, opened). */
  function tableRows(jobs) {
    const rows = [];
    const arrays = new Map();
    for (const job of jobs) {
      if (!job.array_id) {
        rows.push({ key: job.id, job });
        continue;
      }
      let row = arrays.get(job.array_id);
      if (!row) {
        row = { key: `array:${job.array_id}`, array: job.array_id, job, tasks: [] };
        arrays.set(job.array_id, row);
        rows.push(row);
      }
      row.tasks.push(job);
    }
    const out = [];
    for (const row of rows) {
      out.push(row);
      if (!row.array || !opened.has(row.array)) continue;
      const tasks = [...(state.arrayTasks.get(row.array) || row.tasks)];
      tasks.sort((a, b) => a.array_index - b.array_index);
      for (const task of tasks) out.push({ key: task.id, job: state.jobs.get(task.id) || task, task: true });
    }
    return out;
  }

  function toggleArray(id) {
    if (opened.has(id)) {
      opened.delete(id);
      closeArray(id);
    } else {
      opened.add(id);
      loadArray(id, { tasks: true });
    }
    render();
  }

  function createArrayRow(r) {
    const id = r.array;
    const refs = {
      caret: h("span.array-caret", { "aria-hidden": "true" }),
      title: h("span.array-title"),
      name: null,
      id: h("div.job-id.mono"),
      counts: h("div.array-counts", { "data-testid": "array-counts" }),
      image: h("span.mono"),
      bar: h("span.bar-fill"),
      pct: h("span.progress-pct"),
      res: h("span"),
      created: h("span"),
    };
    refs.name = h(
      "button.job-name.array-name",
      { type: "button", "data-testid": "array-toggle", style: LINKLIKE },
      refs.caret,
      refs.title,
    );
    refs.name.addEventListener("click", (e) => {
      e.stopPropagation();
      toggleArray(id);
    });
    const row = h(
      "tr.array-row",
      { "data-array": id, onclick: () => toggleArray(id), style: { cursor: "pointer" } },
      h("td.col-check"),
      h(
        "td.col-job",
        null,
        refs.name,
        refs.id,
        h("a.array-open", {
          href: `#/arrays/${encodeURIComponent(id)}`,
          "data-testid": "array-open",
          text: "Array page →",
          onclick: (e) => e.stopPropagation(),
        }),
      ),
      h("td.col-state", { colspan: "1" }, refs.counts),
      h("td.col-image", null, refs.image),
      h("td.col-progress", null, h("div.mini-progress", null, h("div.bar.bar-thin", null, refs.bar), refs.pct)),
      h("td.col-node", { text: "–" }),
      h("td.col-num", { text: "–" }),
      h("td.col-res", null, refs.res),
      h("td.col-time", null, refs.created),
      h("td.col-time", { text: "–" }),
    );
    row._refs = refs;
    return row;
  }

  function showMore() {
    if (shownRows < tableRows(visibleJobs()).length) shownRows += ROWS;
    else loadMoreJobs();
    render();
  }

  function clearSelection() {
    selected.clear();
    render();
  }

  async function act(action) {
    const jobs = [...selected].map((id) => state.jobs.get(id)).filter(Boolean);
    if (!jobs.some((j) => canAct(action, j))) return;
    cancelBtn.disabled = retryBtn.disabled = pauseBtn.disabled = resumeBtn.disabled = true;
    try {
      const result = await actOnMany(action, jobs);
      for (const r of result.ok) selected.delete(r.job_id);
      const [text, kind] = summarise(action, result);
      toast(text, kind);
      want("jobs", "stats");
    } catch (e) {
      toast(`Could not ${action}: ${e.message}`, "error");
    }
    render();
  }

  function createRow(job) {
    const check = h("input", { type: "checkbox", "aria-label": `Select job ${job.id}` });
    check.addEventListener("change", () => {
      if (check.checked) selected.add(job.id);
      else selected.delete(job.id);
      render();
    });
    const refs = {
      check,
      name: h("a.job-name", { href: `#/jobs/${encodeURIComponent(job.id)}` }),
      id: h("div.job-id.mono"),
      pill: pill(job.state),
      reason: h("div.cell-sub"),
      image: h("span.mono"),
      bar: h("span.bar-fill"),
      pct: h("span.progress-pct"),
      progress: null,
      node: h("span"),
      attempt: h("span"),
      res: h("span"),
      created: h("span"),
      duration: h("span"),
    };
    refs.progress = h("div.mini-progress", null, h("div.bar.bar-thin", null, refs.bar), refs.pct);
    const row = h(
      "tr",
      { "data-job": job.id },
      h("td.col-check", null, check),
      h("td.col-job", null, refs.name, refs.id),
      h("td.col-state", null, refs.pill, refs.reason),
      h("td.col-image", null, refs.image),
      h("td.col-progress", null, refs.progress),
      h("td.col-node", null, refs.node),
      h("td.col-num", null, refs.attempt),
      h("td.col-res", null, refs.res),
      h("td.col-time", null, refs.created),
      h("td.col-time", null, refs.duration),
    );
    row._refs = refs;
    return row;
  }

  return { el, render, unmount() {} };
}

function matches(job, needle) {
  return (
    job.id.toLowerCase().includes(needle) ||
    (job.name || "").toLowerCase().includes(needle) ||
    (job.spec?.image || "").toLowerCase().includes(needle)
  );
}

function updateRow(row, job, selected) {
  const r = row._refs;
  row.dataset.state = job.state;
  const isSelected = selected.has(job.id);
  if (r.check.checked !== isSelected) r.check.checked = isSelected;
  row.classList.toggle("selected", isSelected);
  setText(r.name, job.name || "(unnamed)");
  r.name.classList.toggle("unnamed", !job.name);
  setText(r.id, job.array_id ? `${job.id} · task ${job.array_index}` : job.id);
  setPill(r.pill, job.state);
  const reason = job.error && TERMINAL.has(job.state) ? job.error : job.reason || "";
  setText(r.reason, reason);
  r.reason.title = reason;
  setHidden(r.reason, !reason);
  setText(r.image, job.spec.image);
  r.image.title = job.spec.image;

  // A bar while the job is under way; after it ended, only how far a failed one got.
  const p = job.progress;
  const active = job.state === "running" || job.state === "paused";
  const stoppedAt = p && TERMINAL.has(job.state) && job.state !== "completed" && p.percent < 100;
  if (active) setWidth(r.bar, (p ? p.percent : 0) / 100);
  setText(r.pct, active ? (p ? `${Math.round(p.percent)}%` : "") : stoppedAt ? `${Math.round(p.percent)}%` : "");
  r.progress.title = p?.message || "";
  r.progress.classList.toggle("stopped", Boolean(stoppedAt));
  setHidden(r.progress, !active && !stoppedAt);

  const node = job.node_id ? state.nodes.get(job.node_id) : null;
  setText(r.node, node ? node.name : job.node_id ? job.node_id.slice(0, 8) : "–");
  setText(r.attempt, job.attempt);
  const res = job.spec.resources;
  setText(r.res, `${fmtCores(res.cpu)} CPU · ${fmtMb(res.memory_mb)}`);
  setText(r.created, fmtAgo(job.created_at));
  r.created.title = fmtTime(job.created_at);
  const d = jobDuration(job);
  setText(r.duration, d === null ? "–" : fmtDuration(d));
}

/** An array's row: its tasks counted by state (from its summary, else those loaded). */
function updateArrayRow(row, r, open) {
  const refs = row._refs;
  const summary = state.arrays.get(r.array);
  const job = r.job;
  let counts = summary?.counts;
  if (!counts) {
    counts = {};
    for (const t of r.tasks) counts[t.state] = (counts[t.state] || 0) + 1;
  }
  const total = summary ? summary.count : r.tasks.length;
  row.classList.toggle("open", open);
  row.setAttribute("aria-expanded", String(open));
  setText(refs.caret, open ? "▾ " : "▸ ");
  setText(refs.title, job.name || "(unnamed array)");
  setText(refs.id, `array ${r.array} · ${fmtCount(total)} tasks`);
  const parts = TABS.filter((t) => t && counts[t]).map((t) => `${fmtCount(counts[t])} ${STATE_LABEL[t].toLowerCase()}`);
  setText(refs.counts, parts.join(" · ") || "–");
  refs.counts.title = parts.join(", ");
  setText(refs.image, job.spec.image);
  const ended = (counts.completed || 0) + (counts.failed || 0) + (counts.cancelled || 0) + (counts.timed_out || 0);
  setWidth(refs.bar, total ? ended / total : 0);
  setText(refs.pct, total ? `${Math.round((100 * ended) / total)}%` : "");
  const res = job.spec.resources;
  setText(refs.res, `${fmtCores(res.cpu)} CPU · ${fmtMb(res.memory_mb)}`);
  setText(refs.created, fmtAgo(job.created_at));
  refs.created.title = fmtTime(job.created_at);
}
