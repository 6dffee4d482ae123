// One node: what it offers and holds, why it is in its state, its running jobs, the
// drain controls of its card and, for an admin, what operators did to it (drains,
// undrains) from the audit log.

import * as api from "../api.js";
import { fmtAgo, fmtCores, fmtMb, fmtTime, h, keyed, pill, setHidden, setPill, setText } from "../dom.js";
import { can } from "../roles.js";
import { state, want } from "../store.js";
import { drainControls } from "./drain.js";

//: audit entries of a node listed at most (the newest)
const HISTORY = 50;
//: actions of the audit log that concern a node
const NODE_ACTIONS = new Set(["node.drain", "node.undrain", "node.forget"]);

export function nodeView(container, id) {
  const title = h("h1.job-title");
  const statePill = pill("idle");
  const drainBadge = h("span.badge.badge-drain", { text: "draining", hidden: true });
  const meta = h("div.job-meta");
  const reason = h("div.callout.callout-info", { hidden: true, "data-testid": "node-reason" });
  const details = h("dl.details");
  const jobs = h("div.chips", { "data-testid": "node-jobs" });
  const drain = drainControls();
  const historyBody = h("tbody");
  const historyPanel = h(
    "section.panel",
    { hidden: !can("audit") },
    h("div.panel-head", null, h("h2", { text: "Drains and undrains" })),
    h(
      "div.table-wrap",
      null,
      h(
        "table.admin-table",
        { "data-testid": "node-history" },
        h("thead", null, h("tr", null, ...["When", "Who", "What", "Reason"].map((t) => h("th", { text: t })))),
        historyBody,
      ),
    ),
  );
  const missing = h(
    "div.empty-page",
    { hidden: true },
    h("h2", { text: "No such node" }),
    h("p", { text: `There is no node ${id}; it may have been forgotten.` }),
  );
  const page = h(
    "div.page-body",
    { hidden: true },
    h(
      "div.job-head",
      null,
      h("div.job-head-main", null, h("div.job-title-row", null, title, statePill, drainBadge), meta),
    ),
    reason,
    h(
      "div.admin-columns",
      null,
      h("section.panel", null, h("div.panel-head", null, h("h2", { text: "Node" })), details),
      h(
        "section.panel",
        null,
        h("div.panel-head", null, h("h2", { text: "Running jobs" })),
        h("div.node-page-body", null, jobs, drain.el),
      ),
    ),
    historyPanel,
  );
  container.replaceChildren(h("div.page", null, h("a.back", { href: "#/" }, "← Overview"), missing, page));
  let historyKey = "";
  want("nodes");

  function render() {
    const node = [...state.nodes.values()].find((n) => n.id === id || n.name === id);
    if (!node) {
      // The list may not be loaded yet; once it is, a node not in it is gone.
      if (state.stats) {
        setHidden(missing, false);
        setHidden(page, true);
      }
      return;
    }
    setHidden(missing, true);
    setHidden(page, false);
    document.title = `${node.name} · Nodes · Berth`;
    page.dataset.node = node.name;
    setText(title, node.name);
    setPill(statePill, node.state);
    setHidden(drainBadge, !node.draining);
    setText(meta, `${node.id} · ${node.executor} executor${node.version ? ` · v${node.version}` : ""} · heartbeat ${fmtAgo(node.last_heartbeat_at)}`);
    const why = [node.reason, node.draining ? `draining: ${node.drain_reason || "no reason given"}` : null, node.executor_error]
      .filter(Boolean)
      .join(" · ");
    setText(reason, why);
    setHidden(reason, !why);
    const cap = node.capacity;
    const res = node.reserved || {};
    const alloc = node.allocated || {};
    const rows = [
      ["Host", node.hostname || "–"],
      ["CPU", `${fmtCores(alloc.cpu || 0)} of ${fmtCores(cap.cpu - (res.cpu || 0))} cores allocated${res.cpu ? ` (${fmtCores(res.cpu)} reserved)` : ""}`],
      ["Memory", `${fmtMb(alloc.memory_mb || 0)} of ${fmtMb(cap.memory_mb - (res.memory_mb || 0))} allocated${res.memory_mb ? ` (${fmtMb(res.memory_mb)} reserved)` : ""}`],
      ["GPUs", cap.gpus ? `${alloc.gpus || 0} of ${cap.gpus} allocated` : "none"],
      ["Jobs at once", `${node.running_jobs.length} of ${node.max_parallel}`],
      ["Labels", Object.entries(node.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
      ["Allows", (node.allow || []).join(", ") || "the default sandbox only"],
      ["Cooldown", node.cooldown_until ? `until ${fmtTime(node.cooldown_until)} (${node.infra_failures} failures)` : "–"],
      ["Registered", fmtTime(node.registered_at)],
    ];
    details.replaceChildren(...rows.map(([k, v]) => h("div.detail", null, h("dt", { text: k }), h("dd", { text: v }))));
    const ids = node.running_jobs.length ? node.running_jobs : [null];
    keyed(
      jobs,
      ids,
      (j) => j || "none",
      (j) => (j ? h("a.chip.chip-job", { href: `#/jobs/${encodeURIComponent(j)}` }) : h("span.muted", { text: "none" })),
      (chip, j) => {
        if (!j) return;
        const job = state.jobs.get(j);
        setText(chip, job ? job.name || job.spec.image : j);
        chip.title = `job ${j}`;
      },
    );
    drain.update(node);
    // The history is read again when the node's drain changes.
    const key = `${node.draining}:${node.drain_reason || ""}`;
    if (can("audit") && key !== historyKey) {
      historyKey = key;
      loadHistory(node.id);
    }
  }

  async function loadHistory(nodeId) {
    try {
      const q = new URLSearchParams({ target: nodeId, limit: "5000" });
      const { entries } = await api.get(`/api/v1/audit?${q}`);
      const shown = entries.filter((e) => NODE_ACTIONS.has(e.action)).slice(-HISTORY).reverse();
      keyed(
        historyBody,
        shown,
        (e) => e.id,
        (e) =>
          h(
            "tr",
            { "data-testid": "history-row" },
            h("td.col-time", { text: fmtTime(e.at) }),
            h("td", { text: e.actor }),
            h("td", { text: e.action.replace("node.", "") }),
            h("td", { text: e.details?.reason || "–" }),
          ),
        () => {},
      );
    } catch (e) {
      if (e.status !== 401) console.warn(`reading the node's history failed: ${e.message}`);
    }
  }

  return {
    render(parts) {
      if (parts.has("nodes") || parts.has("stats") || parts.has("jobs")) render();
    },
    unmount() {},
  };
}
