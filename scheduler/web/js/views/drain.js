// Draining a node from its card: a reason (and whether its jobs are stopped and queued
// again elsewhere), undraining, and who drained it and when, read from the audit log.
// Only an admin drains, and only an admin reads the audit log: other roles see the
// reason the node carries and no controls.

import * as api from "../api.js";
import { fmtAgo, fmtTime, h, setHidden, setText } from "../dom.js";
import { can } from "../roles.js";
import { toast } from "../toast.js";

//: audit pages read at most to find a node's latest drain or undrain (oldest first)
const AUDIT_PAGES = 5;
const AUDIT_LIMIT = 1000;

/** node id -> {key, entry}: the audit entry of the drain that ``key`` stands for */
const drainedBy = new Map();
const asking = new Set();

async function lastDrain(node, key, onFound) {
  if (asking.has(node.id)) return;
  asking.add(node.id);
  try {
    let after = 0;
    let entry = null;
    for (let i = 0; i < AUDIT_PAGES; i++) {
      const q = new URLSearchParams({ target: node.id, after: String(after), limit: String(AUDIT_LIMIT) });
      const page = await api.get(`/api/v1/audit?${q}`);
      for (const e of page.entries) if (e.action === "node.drain" || e.action === "node.undrain") entry = e;
      if (page.entries.length < AUDIT_LIMIT) break;
      after = page.next;
    }
    // An agent that shuts down drains its node without an audit entry: an older drain
    // by someone else, or one with another reason, is not this one.
    const same = entry && entry.action === "node.drain" && (entry.details?.reason || "") === (node.drain_reason || "");
    drainedBy.set(node.id, { key, entry: same ? entry : null });
    onFound();
  } catch (e) {
    if (e.status !== 401) console.warn(`reading who drained ${node.name} failed: ${e.message}`);
  } finally {
    asking.delete(node.id);
  }
}

export function drainControls() {
  const by = h("p.drain-by", { hidden: true, "data-testid": "drained-by" });
  const drainBtn = h("button.btn.btn-ghost.btn-sm", { type: "button", "data-testid": "drain", text: "Drain…" });
  const undrainBtn = h("button.btn.btn-outline.btn-sm", { type: "button", "data-testid": "undrain", text: "Undrain" });
  const reason = h("input", {
    type: "text",
    maxLength: 1024,
    placeholder: "Why (shown on the node)",
    "aria-label": "Why the node drains",
    "data-testid": "drain-reason",
  });
  const requeue = h("input", { type: "checkbox", "data-testid": "drain-requeue" });
  const confirm = h("button.btn.btn-danger.btn-sm", { type: "submit", "data-testid": "drain-confirm", text: "Drain" });
  const dismiss = h("button.btn.btn-ghost.btn-sm", { type: "button", text: "Cancel" });
  const form = h(
    "form.drain-form",
    { hidden: true, "data-testid": "drain-form" },
    reason,
    h("label.check", { title: "Stop its jobs now and queue them again elsewhere; otherwise they run to their end" }, requeue, " Requeue its jobs now"),
    h("div.drain-form-actions", null, dismiss, confirm),
  );
  const bar = h("div.drain-actions", null, drainBtn, undrainBtn);
  const el = h("div.drain", null, by, bar, form);
  let node = null;
  // Counts the drains this card has seen begin, so a new one is looked up again.
  let drains = 0;
  let wasDraining = false;

  drainBtn.addEventListener("click", () => {
    setHidden(form, false);
    setHidden(bar, true);
    reason.focus();
  });
  dismiss.addEventListener("click", () => {
    setHidden(form, true);
    setHidden(bar, false);
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    confirm.disabled = true;
    try {
      await send({ drain: true, reason: reason.value.trim(), requeue: requeue.checked });
      reason.value = "";
      requeue.checked = false;
      setHidden(form, true);
      setHidden(bar, false);
    } finally {
      confirm.disabled = false;
    }
  });
  undrainBtn.addEventListener("click", async () => {
    undrainBtn.disabled = true;
    try {
      await send({ drain: false });
    } finally {
      undrainBtn.disabled = false;
    }
  });

  async function send(body) {
    const name = node.name;
    try {
      const changed = await api.post(`/api/v1/nodes/${encodeURIComponent(node.id)}/drain`, body);
      drainedBy.delete(changed.id);
      toast(changed.draining ? `${name} drains: it takes no new jobs` : `${name} takes jobs again`, "success");
    } catch (err) {
      toast(`Could not ${body.drain ? "drain" : "undrain"} ${name}: ${err.message}`, "error");
    }
  }

  function update(n) {
    node = n;
    const allowed = can("drain");
    setHidden(el, !allowed);
    if (!allowed) return;
    if (n.draining && !wasDraining) drains += 1;
    wasDraining = n.draining;
    setHidden(drainBtn, n.draining);
    setHidden(undrainBtn, !n.draining);
    if (n.draining && !form.hidden) {
      setHidden(form, true);
      setHidden(bar, false);
    }
    const key = `${drains}:${n.drain_reason || ""}`;
    const known = drainedBy.get(n.id);
    if (n.draining && can("audit") && (!known || known.key !== key)) {
      lastDrain(n, key, () => node && update(node));
    }
    const entry = n.draining && known && known.key === key ? known.entry : null;
    setHidden(by, !entry);
    if (entry) {
      setText(by, `drained by ${entry.actor} · ${fmtAgo(entry.at)}`);
      by.title = fmtTime(entry.at);
    }
  }

  return { el, update };
}
