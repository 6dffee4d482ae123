// Schedules (periodic jobs): the list with each one's next firing and latest runs,
// pause, resume, run now and delete, a small form to create one, and a page per
// schedule with its job and its recent runs. Pausing and resuming send the schedule
// back with ``paused`` changed, as `berth schedule pause|resume` does.

import * as api from "../api.js";
import { TERMINAL, fmtAgo, fmtCores, fmtIn, fmtMb, fmtTime, h, keyed, pill, setHidden, setPill, setText } from "../dom.js";
import { can, mayChangeSchedule } from "../roles.js";
import { state } from "../store.js";
import { toast } from "../toast.js";
import { confirmButton, field } from "./forms.js";

//: schedules are read again this often while a schedule view is open (next and last
//: runs move on their own, and no event says so)
const POLL_MS = 5000;
//: the runs a row of the list shows
const ROW_RUNS = 5;

const path = (name) => `/api/v1/schedules/${encodeURIComponent(name)}`;

/** The schedule as a ScheduleSpec, to PUT back with ``paused`` changed. */
function asSpec(s, paused) {
  return {
    name: s.name,
    cron: s.cron,
    timezone: s.timezone,
    job: s.job,
    overlap: s.overlap,
    catch_up: s.catch_up,
    paused,
  };
}

async function setPaused(s, paused) {
  try {
    const changed = await api.request("PUT", path(s.name), asSpec(s, paused));
    toast(
      changed.paused ? `${s.name} paused` : `${s.name} resumed; next run ${fmtIn(changed.next_run_at)}`,
      "success",
    );
    return changed;
  } catch (e) {
    toast(`Could not ${paused ? "pause" : "resume"} ${s.name}: ${e.message}`, "error");
    return null;
  }
}

async function runNow(s) {
  try {
    const fired = await api.post(`${path(s.name)}/run`);
    toast(`${s.name} started job ${fired.job.id}`, "success");
    return fired.schedule;
  } catch (e) {
    toast(`Could not run ${s.name}: ${e.message}`, "error");
    return null;
  }
}

async function remove(s) {
  try {
    await api.del(path(s.name));
    toast(`Deleted the schedule ${s.name}`, "success");
    return true;
  } catch (e) {
    toast(`Could not delete ${s.name}: ${e.message}`, "error");
    return false;
  }
}

function nextText(s) {
  if (s.paused) return "paused";
  return s.next_run_at ? fmtIn(s.next_run_at) : "–";
}

function poller(load) {
  let timer = 0;
  let stopped = false;
  const loop = async () => {
    if (document.visibilityState === "visible" && state.me) await load();
    if (!stopped) timer = setTimeout(loop, POLL_MS);
  };
  load();
  timer = setTimeout(loop, POLL_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// --- the list --------------------------------------------------------------------------

export function schedulesView(container) {
  document.title = "Schedules · Berth";
  const body = h("tbody");
  const empty = h(
    "div.empty",
    { hidden: true },
    h("strong", { text: "No schedules yet." }),
    can("schedule") ? " Create one below, or with " : " Create one with ",
    h("code", { text: "berth schedule create" }),
  );
  const error = h("div.callout.callout-error", { hidden: true });
  const form = can("schedule") ? createForm(() => load()) : null;
  const el = h(
    "div.page",
    null,
    h(
      "div.admin-head",
      null,
      h("h1", { text: "Schedules" }),
      h("p.muted.admin-lead", { text: "Periodic jobs: each submits its job at the times its cron expression names." }),
    ),
    error,
    h(
      "section.panel",
      null,
      h("div.panel-head", null, h("h2", { text: "Schedules" })),
      empty,
      h(
        "div.table-wrap",
        null,
        h(
          "table.admin-table",
          { "data-testid": "schedules-table" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              ...["Schedule", "When", "Next run", "Last runs", "Overlap", "Owner", ""].map((t) => h("th", { text: t })),
            ),
          ),
          body,
        ),
      ),
    ),
    form ? form.el : null,
  );
  container.replaceChildren(el);
  let schedules = [];

  async function load() {
    try {
      schedules = (await api.get("/api/v1/schedules")).schedules;
      setHidden(error, true);
    } catch (e) {
      if (e.status === 401) return;
      setText(error, `Could not list the schedules: ${e.message}`);
      setHidden(error, false);
    }
    render();
  }

  function render() {
    setHidden(empty, schedules.length > 0);
    keyed(body, schedules, (s) => s.name, createRow, updateRow);
  }

  function createRow() {
    const refs = {
      name: h("a.job-name"),
      state: h("span.badge"),
      cron: h("div.mono"),
      tz: h("div.cell-sub"),
      next: h("div", { "data-testid": "schedule-next" }),
      nextAt: h("div.cell-sub"),
      runs: h("td", { "data-testid": "schedule-runs" }),
      overlap: h("td"),
      owner: h("td"),
      pause: h("button.btn.btn-outline.btn-sm", { type: "button", "data-testid": "pause-schedule" }),
      run: h("button.btn.btn-ghost.btn-sm", { type: "button", "data-testid": "run-schedule", text: "Run now" }),
      del: null,
    };
    const row = h("tr", { "data-testid": "schedule-row" });
    refs.del = confirmButton("Delete", "Delete for good", async () => (await remove(row._s)) && load(), {
      "data-testid": "delete-schedule",
    });
    refs.pause.addEventListener("click", async () => {
      refs.pause.disabled = true;
      await setPaused(row._s, !row._s.paused);
      refs.pause.disabled = false;
      load();
    });
    refs.run.addEventListener("click", async () => {
      refs.run.disabled = true;
      await runNow(row._s);
      refs.run.disabled = false;
      load();
    });
    refs.actions = h("div.row-actions", null, refs.pause, refs.run, refs.del);
    row.append(
      h("td", null, h("div", null, refs.name, " ", refs.state)),
      h("td", null, refs.cron, refs.tz),
      h("td.col-time", null, refs.next, refs.nextAt),
      refs.runs,
      refs.overlap,
      refs.owner,
      h("td.col-actions", null, refs.actions),
    );
    row._refs = refs;
    return row;
  }

  function updateRow(row, s) {
    const r = row._refs;
    row._s = s;
    row.dataset.schedule = s.name;
    row.dataset.paused = String(s.paused);
    setText(r.name, s.name);
    r.name.href = `#/schedules/${encodeURIComponent(s.name)}`;
    setText(r.state, s.paused ? "paused" : "active");
    r.state.classList.toggle("badge-drain", s.paused);
    setText(r.cron, s.cron);
    setText(r.tz, s.timezone);
    setText(r.next, nextText(s));
    setText(r.nextAt, !s.paused && s.next_run_at ? fmtTime(s.next_run_at) : "");
    runChips(r.runs, s.recent_runs.slice(-ROW_RUNS).reverse());
    setText(r.overlap, s.overlap);
    setText(r.owner, s.owner);
    setText(r.pause, s.paused ? "Resume" : "Pause");
    setHidden(r.actions, !mayChangeSchedule(s));
  }

  const stop = poller(load);
  return {
    render() {},
    unmount() {
      stop();
    },
  };
}

/** Links to runs' jobs, newest first. */
function runChips(el, runs) {
  keyed(
    el,
    runs.length ? runs : [null],
    (run) => (run ? run.job_id : "none"),
    (run) =>
      run
        ? h("a.chip.chip-job.mono", { href: `#/jobs/${encodeURIComponent(run.job_id)}` })
        : h("span.muted", { text: "none yet" }),
    (chip, run) => {
      if (!run) return;
      setText(chip, run.job_id);
      chip.title = `${run.due ? `due ${fmtTime(run.due)}` : "started by hand"}, started ${fmtTime(run.at)}`;
    },
  );
}

// --- creating one ----------------------------------------------------------------------

/** Split a command line as a shell would for plain words and quoted strings. */
export function splitWords(text) {
  const words = [];
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(text))) {
    words.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2] !== undefined ? m[2] : m[3]);
  }
  return words;
}

function createForm(onCreated) {
  const input = (id, attrs) => h(`input#${id}`, { type: "text", autocomplete: "off", spellcheck: false, ...attrs });
  const name = input("schedule-name", { required: true, maxLength: 128, pattern: "[A-Za-z0-9_.\\-]+", placeholder: "nightly-report" });
  const cron = input("schedule-cron", { required: true, maxLength: 256, placeholder: "0 3 * * *" });
  const tz = input("schedule-tz", { value: "UTC", maxLength: 64 });
  const image = input("schedule-image", { required: true, placeholder: "busybox" });
  const command = input("schedule-command", { placeholder: "sh -c 'echo hello'" });
  const cpu = input("schedule-cpu", { value: "1", inputMode: "decimal" });
  const memory = input("schedule-memory", { value: "256", inputMode: "numeric" });
  const overlap = h(
    "select.select#schedule-overlap",
    null,
    ...["allow", "forbid", "replace"].map((v) => h("option", { value: v, text: v })),
  );
  const paused = h("input#schedule-paused", { type: "checkbox" });
  const submit = h("button.btn.btn-primary", { type: "submit", text: "Create schedule" });
  const formError = h("p.form-error", { hidden: true, role: "alert", "data-testid": "schedule-error" });
  const form = h(
    "form.admin-form.admin-form-grid",
    { "data-testid": "schedule-form" },
    field("Name", name, "Letters, digits, . _ -"),
    field("Cron", cron, "minute hour day month weekday (a sixth field: seconds)"),
    field("Timezone", tz, "An IANA name, e.g. Europe/Berlin"),
    field("Image", image),
    field("Command", command, "Words as a shell splits them; empty: the image's own"),
    field("CPU cores", cpu),
    field("Memory (MiB)", memory),
    field("While a run goes on", overlap, "allow another, forbid (skip), or replace it"),
    h("label.check", null, paused, " Create it paused"),
    h("div.form-actions", null, submit),
    formError,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const words = splitWords(command.value);
    const job = {
      image: image.value.trim(),
      resources: { cpu: Number(cpu.value), memory_mb: Number(memory.value) },
    };
    if (words.length) job.command = words;
    const spec = {
      name: name.value.trim(),
      cron: cron.value.trim(),
      timezone: tz.value.trim() || "UTC",
      job,
      overlap: overlap.value,
      paused: paused.checked,
    };
    submit.disabled = true;
    setHidden(formError, true);
    try {
      const made = await api.post("/api/v1/schedules", spec);
      toast(made.paused ? `Schedule ${made.name} created, paused` : `Schedule ${made.name} created; first run ${fmtIn(made.next_run_at)}`, "success");
      form.reset();
      tz.value = "UTC";
      onCreated();
    } catch (err) {
      setText(formError, err.details?.field ? `${err.message} (${err.details.field})` : err.message);
      setHidden(formError, false);
    }
    submit.disabled = false;
  });
  return {
    el: h("section.panel.admin-form-panel", null, h("div.panel-head", null, h("h2", { text: "Create a schedule" })), form),
  };
}

// --- one schedule ----------------------------------------------------------------------

export function scheduleView(container, name) {
  document.title = `${name} · Schedules · Berth`;
  const title = h("h1.job-title", { text: name });
  const badge = h("span.badge");
  const details = h("dl.details");
  const jobDetails = h("dl.details");
  const runsBody = h("tbody");
  const missing = h("div.empty-page", { hidden: true }, h("h2", { text: "No such schedule" }), h("p", { text: `There is no schedule ${name}, or it is not yours.` }));
  const pauseBtn = h("button.btn.btn-outline", { type: "button", "data-testid": "pause-schedule" });
  const runBtn = h("button.btn.btn-ghost", { type: "button", "data-testid": "run-schedule", text: "Run now" });
  const delBtn = confirmButton(
    "Delete",
    "Delete for good",
    async () => {
      if (schedule && (await remove(schedule))) location.hash = "#/schedules";
    },
    { "data-testid": "delete-schedule" },
  );
  const actions = h("div.job-actions", { hidden: true }, pauseBtn, runBtn, delBtn);
  const page = h(
    "div.page-body",
    { hidden: true },
    h("div.job-head", null, h("div.job-head-main", null, h("div.job-title-row", null, title, badge)), actions),
    h(
      "div.admin-columns",
      null,
      h("section.panel", null, h("div.panel-head", null, h("h2", { text: "Schedule" })), details),
      h("section.panel", null, h("div.panel-head", null, h("h2", { text: "Its job" })), jobDetails),
    ),
    h(
      "section.panel",
      null,
      h("div.panel-head", null, h("h2", { text: "Recent runs" })),
      h(
        "div.table-wrap",
        null,
        h(
          "table.admin-table",
          { "data-testid": "schedule-runs" },
          h("thead", null, h("tr", null, ...["Job", "State", "Started", "Due"].map((t) => h("th", { text: t })))),
          runsBody,
        ),
      ),
    ),
  );
  container.replaceChildren(
    h("div.page", null, h("a.back", { href: "#/schedules" }, "← Schedules"), missing, page),
  );
  let schedule = null;
  const jobStates = new Map();

  async function load() {
    try {
      schedule = await api.get(path(name));
    } catch (e) {
      if (e.status === 404) {
        setHidden(missing, false);
        setHidden(page, true);
      } else if (e.status !== 401) {
        toast(`Could not load ${name}: ${e.message}`, "error");
      }
      return;
    }
    await loadRunStates();
    render();
  }

  async function loadRunStates() {
    // The runs' states, read one by one: a schedule keeps at most 20 runs.
    const ids = schedule.recent_runs.map((r) => r.job_id).filter((id) => !jobStates.has(id) || !(TERMINAL.has(jobStates.get(id)) || jobStates.get(id) === "deleted"));
    await Promise.all(
      ids.map(async (id) => {
        try {
          jobStates.set(id, (await api.getJob(id)).state);
        } catch {
          jobStates.set(id, "deleted");
        }
      }),
    );
  }

  function render() {
    const s = schedule;
    setHidden(page, false);
    setHidden(missing, true);
    setText(badge, s.paused ? "paused" : "active");
    badge.classList.toggle("badge-drain", s.paused);
    setText(pauseBtn, s.paused ? "Resume" : "Pause");
    setHidden(actions, !mayChangeSchedule(s));
    const rows = [
      ["Cron", `${s.cron} (${s.timezone})`],
      ["Next run", s.paused ? "paused" : s.next_run_at ? `${fmtIn(s.next_run_at)} · ${fmtTime(s.next_run_at)}` : "–"],
      ["Last run", s.last_run_at ? `${fmtAgo(s.last_run_at)} · job ${s.last_job_id}` : "never"],
      ["Overlap", s.overlap],
      ["Catch up", s.catch_up],
      ["Owner", s.owner],
      ["Skipped", s.skipped ? `${s.skipped}, last ${fmtAgo(s.last_skipped_at)}: ${s.last_skip_reason || ""}` : "none"],
      ["Created", fmtTime(s.created_at)],
      ["Changed", fmtTime(s.updated_at)],
    ];
    details.replaceChildren(...rows.map(([k, v]) => h("div.detail", null, h("dt", { text: k }), h("dd", { text: v }))));
    const j = s.job;
    const command = j.command === null || j.command === undefined ? "the image's own" : Array.isArray(j.command) ? JSON.stringify(j.command) : j.command;
    const jobRows = [
      ["Image", j.image],
      ["Command", command],
      ["Resources", `${fmtCores(j.resources.cpu)} CPU · ${fmtMb(j.resources.memory_mb)}${j.resources.gpus ? ` · ${j.resources.gpus} GPU` : ""}`],
      ["Name", j.name || "–"],
    ];
    jobDetails.replaceChildren(...jobRows.map(([k, v]) => h("div.detail", null, h("dt", { text: k }), h("dd.mono", { text: v }))));
    const runs = [...s.recent_runs].reverse();
    keyed(
      runsBody,
      runs,
      (r) => r.job_id,
      () => {
        const refs = { link: h("a.mono"), pill: pill("queued"), at: h("td.col-time"), due: h("td.col-time") };
        const row = h("tr", { "data-testid": "run-row" }, h("td", null, refs.link), h("td", null, refs.pill), refs.at, refs.due);
        row._refs = refs;
        return row;
      },
      (row, r) => {
        const refs = row._refs;
        setText(refs.link, r.job_id);
        refs.link.href = `#/jobs/${encodeURIComponent(r.job_id)}`;
        setPill(refs.pill, jobStates.get(r.job_id) || "queued");
        setText(refs.at, fmtTime(r.at));
        setText(refs.due, r.due ? fmtTime(r.due) : "by hand");
      },
    );
  }

  pauseBtn.addEventListener("click", async () => {
    if (!schedule) return;
    pauseBtn.disabled = true;
    const changed = await setPaused(schedule, !schedule.paused);
    pauseBtn.disabled = false;
    if (changed) {
      schedule = changed;
      render();
    }
  });
  runBtn.addEventListener("click", async () => {
    if (!schedule) return;
    runBtn.disabled = true;
    await runNow(schedule);
    runBtn.disabled = false;
    load();
  });

  const stop = poller(load);
  return {
    render() {},
    unmount() {
      stop();
    },
  };
}
