// Node cards: state, reason, draining, allocated vs schedulable CPU and memory, live
// CPU and RAM use, each GPU with the job that holds it and its live use, running jobs
// and the age of the last heartbeat.

import {
  fmtAgo,
  fmtCores,
  fmtMb,
  fmtPercent,
  h,
  keyed,
  pill,
  setHidden,
  setPill,
  setText,
  setVariant,
  setWidth,
} from "../dom.js";
import { state } from "../store.js";
import { nodeSpark } from "./nodespark.js";
import { drainControls } from "./drain.js";

//: cards shown before "Show all"
const FOLDED = 12;
//: running jobs listed on a card
const JOB_CHIPS = 4;

export function nodeGrid() {
  const grid = h("div.node-grid", { "data-testid": "nodes" });
  const count = h("span.count");
  const more = h("button.btn.btn-ghost.btn-sm", { type: "button", hidden: true });
  const empty = h(
    "div.empty",
    { hidden: true },
    h("strong", { text: "No nodes yet." }),
    " Start an agent: ",
    h("code", { text: "berth agent --scheduler URL --join-token-file join.token" }),
  );
  let unfolded = false;
  more.addEventListener("click", () => {
    unfolded = !unfolded;
    render();
  });
  const el = h(
    "section.panel",
    { "aria-labelledby": "nodes-title" },
    h(
      "div.panel-head",
      null,
      h("h2#nodes-title", null, "Nodes ", count),
      h(
        "div.legend",
        null,
        ...["idle", "busy", "unhealthy", "offline"].map((s) => h(`span.legend-item.node-${s}`, null, h("span.node-dot"), s)),
      ),
    ),
    empty,
    grid,
    h("div.panel-foot", null, more),
  );

  function render() {
    const nodes = [...state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
    setText(count, nodes.length);
    setHidden(empty, nodes.length > 0 || !state.stats);
    const shown = unfolded ? nodes : nodes.slice(0, FOLDED);
    setHidden(more, nodes.length <= FOLDED);
    setText(more, unfolded ? "Show fewer" : `Show all ${nodes.length} nodes`);
    keyed(grid, shown, (n) => n.id, createCard, updateCard);
  }

  function tick() {
    const now = Date.now();
    for (const el of grid.querySelectorAll("[data-heartbeat]")) {
      setText(el, fmtAgo(el.dataset.heartbeat || null, now));
    }
  }

  return { el, render, tick };
}

function createCard(node) {
  const refs = {
    dot: h("span.node-dot"),
    name: h("a.node-link"),
    host: h("div.node-host"),
    pill: pill(node.state),
    drain: h("span.badge.badge-drain", { text: "draining", hidden: true }),
    reason: h("p.node-reason"),
    cpu: resourceMeter("CPU"),
    mem: resourceMeter("Memory"),
    spark: nodeSpark(),
    gpus: h("div.node-gpus", { "aria-label": "GPUs" }),
    slots: h("span"),
    heartbeat: h("span", { "data-heartbeat": "" }),
    jobs: h("div.node-jobs"),
    labels: h("div.node-labels"),
    drainCtl: drainControls(),
  };
  const el = h(
    "article.node",
    { "data-testid": "node-card" },
    h(
      "header.node-head",
      null,
      refs.dot,
      h("div.node-title", null, h("h3.node-name", null, refs.name), refs.host),
      h("div.node-badges", null, refs.drain, refs.pill),
    ),
    refs.reason,
    refs.cpu.el,
    refs.mem.el,
    refs.spark.el,
    refs.gpus,
    refs.jobs,
    h(
      "footer.node-foot",
      null,
      h("span.node-foot-item", null, h("span.muted", { text: "Jobs " }), refs.slots),
      h("span.node-foot-item", null, h("span.muted", { text: "Heartbeat " }), refs.heartbeat),
    ),
    refs.labels,
    refs.drainCtl.el,
  );
  el._refs = refs;
  return el;
}

function updateCard(el, node) {
  const r = el._refs;
  el.dataset.node = node.name;
  el.dataset.state = node.state;
  setVariant(el, "node-", node.state);
  setText(r.name, node.name);
  r.name.href = `#/nodes/${encodeURIComponent(node.id)}`;
  const host = [node.hostname && node.hostname !== node.name ? node.hostname : null, `${node.executor} executor`, node.version ? `v${node.version}` : null];
  setText(r.host, host.filter(Boolean).join(" · "));
  setPill(r.pill, node.state);
  setHidden(r.drain, !node.draining);
  r.drain.title = node.drain_reason || "takes no new jobs; running ones finish";
  const reason = [node.reason, node.draining && node.drain_reason ? `draining: ${node.drain_reason}` : null]
    .filter(Boolean)
    .join(" · ");
  setText(r.reason, reason);
  setHidden(r.reason, !reason);
  r.reason.classList.toggle("node-reason-drain", !node.reason && node.draining);

  const cap = node.capacity;
  const res = node.reserved || { cpu: 0, memory_mb: 0 };
  const alloc = node.allocated || { cpu: 0, memory_mb: 0 };
  const m = node.metrics;
  const offline = node.state === "offline";
  const cpuTotal = Math.max(0, cap.cpu - res.cpu);
  r.cpu.set({
    used: alloc.cpu,
    total: cpuTotal,
    text: `${fmtCores(alloc.cpu)} / ${fmtCores(cpuTotal)} cores`,
    live: m && !offline ? m.cpu_percent / 100 : null,
    liveText: m && !offline ? `${fmtPercent(m.cpu_percent)} busy` : "no live figures",
    reserved: res.cpu > 0 ? `${fmtCores(res.cpu)} reserved for the host` : "",
  });
  const memTotal = Math.max(0, cap.memory_mb - res.memory_mb);
  const ramUsed = m && m.ram_total_mb ? m.ram_total_mb - m.ram_free_mb : null;
  r.mem.set({
    used: alloc.memory_mb,
    total: memTotal,
    text: `${fmtMb(alloc.memory_mb)} / ${fmtMb(memTotal)}`,
    live: ramUsed !== null && !offline ? ramUsed / m.ram_total_mb : null,
    liveText:
      ramUsed !== null && !offline ? `${fmtMb(ramUsed)} of ${fmtMb(m.ram_total_mb)} in use` : "no live figures",
    reserved: res.memory_mb > 0 ? `${fmtMb(res.memory_mb)} reserved for the host` : "",
  });

  r.spark.update(node);

  const gpus = gpuRows(node);
  keyed(r.gpus, gpus, (g) => g.index, createGpu, (row, g) => updateGpu(row, g, offline));
  setHidden(r.gpus, gpus.length === 0);

  setText(r.slots, `${node.running_jobs.length} / ${node.max_parallel}`);
  if (r.heartbeat.dataset.heartbeat !== (node.last_heartbeat_at || "")) {
    r.heartbeat.dataset.heartbeat = node.last_heartbeat_at || "";
    r.heartbeat.title = node.last_heartbeat_at || "";
  }
  setText(r.heartbeat, fmtAgo(node.last_heartbeat_at));

  const ids = node.running_jobs;
  const chips = ids.slice(0, JOB_CHIPS).map((id) => {
    const job = state.jobs.get(id);
    return { id, label: job ? job.name || job.spec.image : id };
  });
  if (ids.length > JOB_CHIPS) chips.push({ id: "+", label: `+${ids.length - JOB_CHIPS} more` });
  keyed(
    r.jobs,
    chips,
    (c) => c.id,
    (c) =>
      c.id === "+"
        ? h("span.chip.chip-more")
        : h("a.chip.chip-job", { href: `#/jobs/${encodeURIComponent(c.id)}`, title: `job ${c.id}` }),
    (chip, c) => setText(chip, c.label),
  );
  setHidden(r.jobs, ids.length === 0);

  const labels = Object.entries(node.labels || {});
  const labelKey = labels.map(([k, v]) => `${k}=${v}`).join(",");
  if (r.labels.dataset.key !== labelKey) {
    r.labels.dataset.key = labelKey;
    r.labels.replaceChildren(...labels.map(([k, v]) => h("span.label-chip", null, h("span.muted", { text: `${k}=` }), v)));
  }
  setHidden(r.labels, labels.length === 0);
  r.drainCtl.update(node);
}

/**
 * The node's GPUs: those its agent registered (or, from an agent that lists none, its
 * GPU count by index), each with the job holding it and its live use when NVML is there.
 */
function gpuRows(node) {
  const use = new Map(((node.metrics && node.metrics.gpus) || []).map((u) => [u.index, u]));
  const holders = node.device_jobs || {};
  const devices =
    node.devices && node.devices.length
      ? node.devices
      : Array.from({ length: node.capacity.gpus || 0 }, (_, index) => ({ index }));
  return devices.map((d) => ({ ...d, job: holders[String(d.index)] || null, use: use.get(d.index) || null }));
}

function createGpu(g) {
  const refs = {
    name: h("span.gpu-name"),
    job: h("a.chip.chip-job"),
    free: h("span.gpu-free", { text: "free" }),
    fill: h("span.bar-fill"),
    live: h("span.gpu-live"),
  };
  const el = h(
    "div.gpu",
    { "data-testid": "gpu", "data-index": String(g.index) },
    h("div.gpu-head", null, refs.name, refs.job, refs.free),
    h("div.bar.bar-thin.bar-live", { title: "GPU utilisation reported by the agent (NVML)" }, refs.fill),
    refs.live,
  );
  el._refs = refs;
  return el;
}

function updateGpu(el, g, offline) {
  const r = el._refs;
  const facts = [`GPU ${g.index}`, g.model || "model unknown", g.memory_mb ? fmtMb(g.memory_mb) : null];
  setText(r.name, facts.filter(Boolean).join(" · "));
  r.name.title = g.uuid || "UUID unknown (registered by index)";
  if (g.job) {
    const job = state.jobs.get(g.job);
    setText(r.job, job ? job.name || job.spec.image : g.job);
    r.job.href = `#/jobs/${encodeURIComponent(g.job)}`;
    r.job.title = `held by job ${g.job}`;
  }
  setHidden(r.job, !g.job);
  setHidden(r.free, Boolean(g.job));
  const u = !offline ? g.use : null;
  setWidth(r.fill, u ? u.utilization_percent / 100 : 0);
  r.fill.classList.toggle("bar-hot", Boolean(u) && u.utilization_percent >= 90);
  setText(
    r.live,
    u
      ? `${fmtPercent(u.utilization_percent)} busy · ${fmtMb(u.memory_used_mb)}${g.memory_mb ? ` of ${fmtMb(g.memory_mb)}` : ""} in use`
      : "no live figures",
  );
}

/** Allocated vs schedulable (thick bar) and live use (thin bar) of one resource. */
function resourceMeter(label) {
  const fill = h("span.bar-fill");
  const liveFill = h("span.bar-fill");
  const value = h("span.meter-value");
  const liveText = h("span.meter-live");
  const el = h(
    "div.meter",
    null,
    h("div.meter-head", null, h("span.meter-label", null, label, h("span.meter-kind", { text: " allocated" })), value),
    h("div.bar", { title: "allocated to jobs, of what the node offers (capacity less reserved)" }, fill),
    h("div.bar.bar-thin.bar-live", { title: "live use reported by the agent" }, liveFill),
    h("div.meter-foot", null, liveText),
  );
  return {
    el,
    set({ used, total, text, live, liveText: lt, reserved }) {
      const frac = total > 0 ? used / total : 0;
      setWidth(fill, frac);
      fill.classList.toggle("bar-hot", frac >= 0.9);
      setText(value, text);
      value.title = reserved;
      setWidth(liveFill, live ?? 0);
      liveFill.classList.toggle("bar-hot", (live ?? 0) >= 0.9);
      setText(liveText, lt);
    },
  };
}
