// One job: its state and reason, live progress, live log, attempts and spec, with
// Cancel, Retry and an opt-in notification when it ends.

import * as api from "../api.js";
import {
  STATE_LABEL,
  TERMINAL,
  fmtAgo,
  fmtCores,
  fmtDuration,
  fmtIn,
  fmtMb,
  fmtTime,
  fill,
  h,
  icon,
  jobDuration,
  jobTitle,
  keyed,
  pill,
  setHidden,
  setPill,
  setText,
  setVariant,
  setWidth,
} from "../dom.js";
import { ACTION_FROM, mayChangeJobs, maySubmit } from "../jobactions.js";
import { LogView } from "../logview.js";
import * as notify from "../notify.js";
import { state, want } from "../store.js";
import { toast } from "../toast.js";
import { depGraph } from "./depgraph.js";
import { jobFiles } from "./jobfiles.js";
import { usagePanel } from "./usage.js";

const CAN_CANCEL = ACTION_FROM.cancel;
const CAN_RETRY = ACTION_FROM.retry;
// The keys of a queued job's ``pending`` counts, in the scheduler's order of precedence:
// a node counts under the first that applies.
const PENDING_CAUSES = [
  ["offline", "offline"],
  ["draining", "draining"],
  ["cooldown", "in cooldown"],
  ["unhealthy", "unhealthy"],
  ["allow_list", "do not allow what the job needs"],
  ["labels", "do not match its constraints"],
  ["gpu_model", "have no GPUs of the model or memory it asks for"],
  ["parallel_limit", "at their parallel limit"],
  ["cpu", "lack CPU"],
  ["memory", "lack memory"],
  ["gpus", "lack GPUs"],
  ["reserved", "reserved for an earlier job"],
];

export function jobView(container, jobId) {
  const title = h("h1.job-title");
  const statePill = pill("queued");
  const meta = h("div.job-meta");
  const watchBtn = h("button.btn.btn-ghost", { type: "button", "data-testid": "watch" });
  const retryBtn = h(
    "button.btn.btn-outline",
    { type: "button", "data-testid": "retry-job", onclick: () => act("retry") },
    icon("retry"),
    "Retry",
  );
  const cancelBtn = h(
    "button.btn.btn-danger",
    { type: "button", "data-testid": "cancel-job", onclick: () => act("cancel") },
    icon("x"),
    "Cancel",
  );
  const pauseBtn = h(
    "button.btn.btn-outline",
    { type: "button", "data-testid": "pause-job", hidden: true, onclick: () => act("pause") },
    "Pause",
  );
  const resumeBtn = h(
    "button.btn.btn-outline",
    { type: "button", "data-testid": "resume-job", hidden: true, onclick: () => act("resume") },
    "Resume",
  );
  const runAgain = h(
    "a.btn.btn-ghost",
    { href: `#/submit?from=${encodeURIComponent(jobId)}`, "data-testid": "run-again", hidden: true },
    "Run again with changes",
  );
  const graph = depGraph(jobId);
  const files = jobFiles();
  const callout = h("div.callout", { hidden: true, "data-testid": "job-reason" });
  // A queued job's nodes counted by why they cannot take it.
  const pendingBody = h("tbody");
  const pendingPanel = h(
    "section.panel.pending-panel",
    { hidden: true, "data-testid": "job-pending" },
    h("div.panel-head", null, h("h2", { text: "Nodes by why they cannot take it" })),
    h(
      "div.table-wrap",
      null,
      h(
        "table.pending-counts",
        null,
        h("thead", null, h("tr", null, h("th", { text: "Nodes" }), h("th", { text: "Why" }))),
        pendingBody,
      ),
    ),
  );
  // The node kept for a queued job that fits nowhere now, and when it should start there.
  const reservationDetails = h("dl.details");
  const reservationPanel = h(
    "section.panel.reservation-panel",
    { hidden: true, "data-testid": "job-reservation" },
    h("div.panel-head", null, h("h2", { text: "Reserved for it" })),
    reservationDetails,
  );

  const progressFill = h("span.bar-fill");
  const progressPct = h("span.progress-big-pct", { "data-testid": "progress-percent" });
  const progressMsg = h("span.progress-msg");
  const progressPanel = h(
    "section.panel.progress-panel",
    { "data-testid": "progress" },
    h("div.progress-head", null, h("span.progress-label", { text: "Progress" }), progressPct, progressMsg),
    h("div.bar.bar-big", { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, progressFill),
  );

  const logStatus = h("span.log-status");
  const attemptSelect = h("select.select", { "aria-label": "Attempt whose log is shown" });
  const wrapToggle = h("input", { type: "checkbox" });
  const download = h("a.btn.btn-ghost.btn-sm", { title: "Download the whole log" }, icon("download"), "Download");
  const log = new LogView({ onStatus: showLogStatus });
  const logPanel = h(
    "section.panel.log-panel",
    null,
    h(
      "div.panel-head",
      null,
      h("h2", null, "Logs ", logStatus),
      h(
        "div.log-tools",
        null,
        h("label.toggle", null, wrapToggle, "Wrap"),
        log.progressToggle,
        attemptSelect,
        download,
      ),
    ),
    log.el,
  );
  wrapToggle.addEventListener("change", () => log.setWrap(wrapToggle.checked));

  const usage = usagePanel(jobId);
  const details = h("dl.details");
  const attemptsBody = h("tbody");
  const specBox = h("div.spec");

  const page = h(
    "div.page.job-page",
    { "data-testid": "job-page" },
    h("a.back", { href: "#/" }, icon("back"), "Overview"),
    h(
      "header.job-head",
      null,
      h("div.job-head-main", null, h("div.job-title-row", null, title, statePill), meta),
      h("div.job-actions", null, watchBtn, runAgain, pauseBtn, resumeBtn, retryBtn, cancelBtn),
    ),
    callout,
    pendingPanel,
    reservationPanel,
    progressPanel,
    graph.el,
    usage.el,
    h(
      "div.job-grid",
      null,
      logPanel,
      h(
        "div.job-side",
        null,
        h("section.panel", null, h("div.panel-head", null, h("h2", { text: "Details" })), details),
        files.el,
        h(
          "section.panel",
          null,
          h("div.panel-head", null, h("h2", { text: "Attempts" })),
          h(
            "div.table-wrap",
            null,
            h(
              "table.attempts",
              { "data-testid": "attempts" },
              h(
                "thead",
                null,
                h(
                  "tr",
                  null,
                  ...["#", "State", "Node", "Started", "Ran", "Exit"].map((t) => h("th", { text: t })),
                ),
              ),
              attemptsBody,
            ),
          ),
        ),
        h("section.panel", null, h("div.panel-head", null, h("h2", { text: "Spec" })), specBox),
      ),
    ),
  );
  const missing = h("div.empty.empty-page", { hidden: true });
  container.replaceChildren(page, missing);

  let shownAttempt = null;
  let followCurrent = true;
  let specKey = "";
  attemptSelect.addEventListener("change", () => {
    const n = Number(attemptSelect.value);
    followCurrent = n === state.job?.attempt;
    startLog(n);
  });
  watchBtn.addEventListener("click", toggleWatch);

  function startLog(attempt) {
    shownAttempt = attempt;
    download.href = api.logUrl(jobId, attempt, { download: true });
    log.follow(jobId, attempt);
  }

  function showLogStatus({ state: s, end }) {
    const label = {
      following: "live",
      reconnecting: "reconnecting…",
      ended: end && end.exit_code !== undefined && end.exit_code !== null ? `ended · exit ${end.exit_code}` : "ended",
    }[s];
    setText(logStatus, label || "");
    setVariant(logStatus, "log-status-", s);
  }

  async function act(action) {
    retryBtn.disabled = cancelBtn.disabled = pauseBtn.disabled = resumeBtn.disabled = true;
    try {
      const job = await api.actOnJob(action, jobId);
      if (!state.job || job.index >= state.job.index) state.job = job;
      const done = { cancel: "Job cancelled", pause: "Job paused", resume: "Job resumed" }[action];
      toast(done || `Job queued again (attempt ${job.attempt})`, "success");
      want("jobs", "stats");
    } catch (e) {
      toast(`Could not ${action}: ${e.message}`, "error");
    }
    render(new Set(["job"]));
  }

  async function toggleWatch() {
    if (notify.isWatched(jobId)) {
      notify.unwatch(jobId);
      toast("You will not be notified about this job");
    } else {
      try {
        await notify.watch(jobId);
        toast("You will be notified when this job ends", "success");
      } catch (e) {
        toast(e.message, "error");
      }
    }
    renderWatch(state.job);
  }

  function renderWatch(job) {
    const ended = job && TERMINAL.has(job.state);
    setHidden(watchBtn, !notify.supported() || ended);
    const on = notify.isWatched(jobId);
    watchBtn.replaceChildren(icon(on ? "bell" : "bell-off"), on ? "Watching" : "Notify me");
    watchBtn.classList.toggle("active", on);
    watchBtn.title = on ? "A browser notification will tell you when this job ends" : "Get a browser notification when this job ends";
  }

  function render(parts) {
    if (!parts.has("job") && !parts.has("nodes") && !parts.has("jobs")) return;
    const job = state.job && state.job.id === jobId ? state.job : null;
    if (!job) {
      if (state.jobMissing) showMissing();
      return;
    }
    setHidden(page, false);
    setHidden(missing, true);
    document.title = `${jobTitle(job)} · Berth`;
    setText(title, job.name || job.spec.image);
    setPill(statePill, job.state);
    page.dataset.state = job.state;
    const node = job.node_id ? state.nodes.get(job.node_id) : null;
    fill(
      meta,
      h("span.mono", { text: job.id }),
      h("span", { text: job.spec.image, class: "mono" }),
      h("span", { text: `submitted ${fmtAgo(job.created_at)}${job.submitted_by ? ` by ${job.submitted_by}` : ""}` }),
      node ? h("span", null, "on ", h("b", { text: node.name })) : null,
    );

    // What this login may not do is not offered at all; the scheduler refuses it anyway.
    const mayChange = mayChangeJobs(state.me);
    cancelBtn.disabled = !CAN_CANCEL.has(job.state);
    retryBtn.disabled = !CAN_RETRY.has(job.state);
    pauseBtn.disabled = !ACTION_FROM.pause.has(job.state);
    resumeBtn.disabled = !ACTION_FROM.resume.has(job.state);
    setHidden(cancelBtn, !mayChange || TERMINAL.has(job.state));
    setHidden(retryBtn, !mayChange || !TERMINAL.has(job.state) || job.state === "completed");
    setHidden(pauseBtn, !mayChange || !ACTION_FROM.pause.has(job.state));
    setHidden(resumeBtn, !mayChange || !ACTION_FROM.resume.has(job.state));
    setHidden(runAgain, !maySubmit(state.me));
    renderWatch(job);

    const why = [job.reason, job.error && job.error !== job.reason ? job.error : null].filter(Boolean).join(" — ");
    setHidden(callout, !why);
    setText(callout, why);
    setVariant(callout, "callout-", ["failed", "timed_out"].includes(job.state) ? "error" : job.state === "cancelled" ? "muted" : "info");

    renderPending(job);
    renderReservation(job);
    renderProgress(job);
    usage.render(job);
    renderDetails(job, node);
    renderAttempts(job);
    renderSpec(job);
    graph.update(job);
    files.update(job);

    // Follow the current attempt's log; a retry starts a new one.
    const options = [];
    for (let n = job.attempt; n >= 1; n--) options.push(n);
    keyed(
      attemptSelect,
      options,
      (n) => n,
      (n) => h("option", { value: String(n) }),
      (opt, n) => setText(opt, n === job.attempt ? `Attempt ${n} (current)` : `Attempt ${n}`),
    );
    if (shownAttempt === null || (followCurrent && shownAttempt !== job.attempt)) startLog(job.attempt);
    if (attemptSelect.value !== String(shownAttempt)) attemptSelect.value = String(shownAttempt);
  }

  function renderPending(job) {
    const counts = job.state === "queued" && job.pending ? job.pending : {};
    const rows = PENDING_CAUSES.filter(([key]) => counts[key] > 0)
      .map(([key, label]) => [key, label, counts[key]])
      .sort((a, b) => b[2] - a[2]);
    setHidden(pendingPanel, rows.length === 0);
    keyed(
      pendingBody,
      rows,
      (r) => r[0],
      (r) => {
        const tr = h("tr", { "data-cause": r[0] });
        tr._cells = [h("td.num"), h("td")];
        tr.append(...tr._cells);
        return tr;
      },
      (tr, r) => {
        setText(tr._cells[0], r[2]);
        setText(tr._cells[1], r[1]);
      },
    );
  }

  function renderReservation(job) {
    const r = job.state === "queued" ? job.reservation : null;
    setHidden(reservationPanel, !r);
    if (!r) return;
    const start = r.start
      ? `${fmtTime(r.start)} (${fmtIn(r.start)})`
      : "unknown: a job there has no end in sight";
    detailRows(reservationDetails, [
      ["Node", r.node],
      ["Estimated start", start],
    ]);
  }

  function renderProgress(job) {
    const p = job.progress;
    const done = job.state === "completed";
    const pct = done ? 100 : p ? p.percent : 0;
    setWidth(progressFill, pct / 100);
    progressPanel.querySelector(".bar").setAttribute("aria-valuenow", String(Math.round(pct)));
    setVariant(progressFill, "tone-", done ? "ok" : ["failed", "timed_out"].includes(job.state) ? "bad" : job.state === "running" ? "live" : "idle");
    setText(progressPct, p || done ? `${Math.round(pct)}%` : "–");
    const msg = p?.message || (job.state === "queued" ? "waiting for a node" : !p && !done ? "no progress reported" : "");
    setText(progressMsg, msg);
  }

  function renderDetails(job, node) {
    const res = job.spec.resources;
    const ran = jobDuration(job);
    const rows = [
      ["State", STATE_LABEL[job.state]],
      ["Node", node ? node.name : job.node_id || "–"],
      ["Attempt", `${job.attempt} of up to ${job.spec.max_retries + 1}${job.retries ? ` (${job.retries} automatic)` : ""}`],
      ["Exit code", job.exit_code ?? "–"],
      ["Submitted", fmtTime(job.created_at)],
      ["Started", fmtTime(job.started_at)],
      ["Finished", fmtTime(job.finished_at)],
      ["Ran for", ran === null ? "–" : fmtDuration(ran)],
      ["Requests", `${fmtCores(res.cpu)} CPU · ${fmtMb(res.memory_mb)}${res.gpus ? ` · ${res.gpus} GPU` : ""}`],
      ["Timeout", fmtDuration(job.spec.timeout_s * 1000)],
      ["Priority", job.spec.priority],
      ["Network", job.spec.network],
    ];
    if (job.usage) {
      rows.push(["Using", `${Math.round(job.usage.cpu_percent)}% CPU · ${fmtMb(job.usage.memory_mb)} (peak ${fmtMb(job.usage.peak_memory_mb)})`]);
    }
    if (job.spec.group) rows.push(["Group", job.spec.group]);
    if (job.cancelled_by) rows.push(["Cancelled by", job.cancelled_by]);
    if (job.array_id) rows.push(["Array", `${job.array_id}, task ${job.array_index}`]);
    const schedule = (job.spec.labels || {})["berth.schedule"];
    if (schedule) rows.push(["Schedule", `a run of ${schedule}`]);
    // The queue's rules, where the job has them.
    rows.push(["Requeues", `${job.requeues || 0} of up to ${job.spec.max_requeues} (losses it did not cause)`]);
    if (job.error_code) rows.push(["Ended by", job.error_code.replaceAll("_", " ")]);
    if (job.spec.expected_runtime_s) rows.push(["Expected runtime", fmtDuration(job.spec.expected_runtime_s * 1000)]);
    if (job.spec.queue_timeout_s) rows.push(["Queue timeout", fmtDuration(job.spec.queue_timeout_s * 1000)]);
    if (job.spec.deadline) rows.push(["Deadline", fmtTime(job.spec.deadline)]);
    if (job.spec.preemptible) rows.push(["Preemptible", "yes: a job of higher priority may stop and requeue it"]);
    if (job.spec.retry_on_exit_codes) rows.push(["Retried on exit codes", job.spec.retry_on_exit_codes.join(", ")]);
    if (job.spec.no_retry_on_exit_codes) rows.push(["Never retried on", job.spec.no_retry_on_exit_codes.join(", ")]);
    if ((job.spec.depends_on || []).length) {
      const deps = job.spec.depends_on.map((d) => (typeof d === "string" ? d : d.when === "completed" ? d.job : `${d.job} (${d.when})`));
      rows.push(["After", deps.join(", ")]);
    }
    detailRows(details, rows);
  }

  function renderAttempts(job) {
    const current = {
      attempt: job.attempt,
      state: job.state,
      node_id: job.node_id,
      started_at: job.started_at,
      finished_at: job.finished_at,
      exit_code: job.exit_code,
      error: job.error,
      current: true,
    };
    const rows = [current, ...[...(job.attempts || [])].reverse()];
    keyed(
      attemptsBody,
      rows,
      (a) => a.attempt,
      () => {
        const tr = h("tr");
        tr._cells = [h("td"), h("td"), h("td"), h("td"), h("td"), h("td")];
        tr._pill = pill("queued");
        tr._cells[1].append(tr._pill);
        tr.append(...tr._cells);
        return tr;
      },
      (tr, a) => {
        const [n, , nodeCell, started, ran, exit] = tr._cells;
        setText(n, a.attempt);
        n.title = a.current ? "current attempt" : "";
        setPill(tr._pill, a.state);
        const nd = a.node_id ? state.nodes.get(a.node_id) : null;
        setText(nodeCell, nd ? nd.name : a.node_id ? a.node_id.slice(0, 8) : "–");
        setText(started, a.started_at ? fmtAgo(a.started_at) : "–");
        started.title = a.started_at ? fmtTime(a.started_at) : "";
        const d = jobDuration(a);
        setText(ran, d === null ? "–" : fmtDuration(d));
        setText(exit, a.exit_code ?? "–");
        tr.title = a.error || "";
        tr.classList.toggle("current", Boolean(a.current));
      },
    );
  }

  // A secret's value never reaches the dashboard: the spec names the secret only.
  function envValue(v) {
    return v !== null && typeof v === "object" ? `<secret ${v.secret}>` : v;
  }

  // How the image is pulled: the policy (unset: the agent's) and the secret's name only.
  function pullText(spec) {
    const policy = spec.pull_policy || "the agent's pull policy";
    return spec.image_pull_secret ? `${policy}, with secret ${spec.image_pull_secret}` : policy;
  }

  function renderSpec(job) {
    const spec = job.spec;
    const key = JSON.stringify(spec);
    if (key === specKey) return;
    specKey = key;
    const command = spec.command === null || spec.command === undefined
      ? "(the image's default command)"
      : Array.isArray(spec.command)
        ? spec.command.map(quote).join(" ")
        : `sh -c ${quote(spec.command)}`;
    const env = Object.entries(spec.env || {});
    const labels = Object.entries(spec.labels || {});
    const constraints = Object.entries(spec.constraints?.labels || {});
    fill(
      specBox,
      h("div.spec-label", { text: "Command" }),
      h("pre.code", { text: command }),
      spec.workdir ? [h("div.spec-label", { text: "Working directory" }), h("pre.code", { text: spec.workdir })] : null,
      spec.image_pull_secret || spec.pull_policy
        ? [h("div.spec-label", { text: "Image pull" }), h("pre.code", { text: pullText(spec) })]
        : null,
      env.length
        ? [h("div.spec-label", { text: "Environment" }), h("pre.code", { text: env.map(([k, v]) => `${k}=${envValue(v)}`).join("\n") })]
        : null,
      constraints.length
        ? [h("div.spec-label", { text: "Runs on nodes labelled" }), chips(constraints)]
        : null,
      labels.length ? [h("div.spec-label", { text: "Labels" }), chips(labels)] : null,
      spec.depends_on?.length ? [h("div.spec-label", { text: "Depends on" }), chips(spec.depends_on.map((d) => [d, null]))] : null,
    );
  }

  function tick() {
    const job = state.job && state.job.id === jobId ? state.job : null;
    if (job && !TERMINAL.has(job.state)) render(new Set(["job"]));
  }
  const timer = setInterval(tick, 1000);

  // Until the job is loaded, or if it does not exist.
  setHidden(page, true);
  setText(missing, "Loading job…");
  setHidden(missing, false);

  function showMissing() {
    setHidden(page, true);
    setHidden(missing, false);
    document.title = "No such job · Berth";
    fill(
      missing,
      h("strong", { text: "No such job." }),
      ` There is no job ${jobId}; ended jobs are deleted once their retention has passed. `,
      h("a", { href: "#/", text: "Back to the overview" }),
    );
  }

  return {
    render,
    unmount() {
      clearInterval(timer);
      log.destroy();
      usage.unmount();
    },
  };
}

// A <dl> of [label, text] rows, updated in place.
function detailRows(dl, rows) {
  keyed(
    dl,
    rows,
    (r) => r[0],
    (r) => {
      const dd = h("dd");
      const frag = h("div.detail", null, h("dt", { text: r[0] }), dd);
      frag._dd = dd;
      return frag;
    },
    (el, r) => setText(el._dd, r[1]),
  );
}

function quote(arg) {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${String(arg).replace(/'/g, "'\\''")}'`;
}

function chips(pairs) {
  return h(
    "div.chips",
    null,
    ...pairs.map(([k, v]) =>
      v === null ? h("a.label-chip.mono", { href: `#/jobs/${encodeURIComponent(k)}`, text: k }) : h("span.label-chip", null, h("span.muted", { text: `${k}=` }), v),
    ),
  );
}
