// The schedulers sharing the store: who leads, who stands by, their epochs, how far each
// has applied the log and when each last noted itself. A scheduler alone on its store
// lists itself as the leader.

import * as api from "../api.js";
import { fmtAgo, fmtCount, fmtTime, h, keyed, setHidden, setText, setVariant } from "../dom.js";
import { state } from "../store.js";

//: the list is read again this often (schedulers note themselves every second)
const POLL_MS = 2000;

export function schedulersView(container) {
  document.title = "Schedulers · Berth";
  const body = h("tbody");
  const summary = h("p.muted.admin-lead");
  const error = h("div.callout.callout-error", { hidden: true });
  const el = h(
    "div.page",
    null,
    h("div.admin-head", null, h("h1", { text: "Schedulers" }), summary),
    error,
    h(
      "section.panel",
      null,
      h(
        "div.table-wrap",
        null,
        h(
          "table.admin-table",
          { "data-testid": "schedulers-table" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              ...["Scheduler", "Role", "Epoch", "Applied index", "Behind", "Last seen"].map((t) => h("th", { text: t })),
            ),
          ),
          body,
        ),
      ),
    ),
  );
  container.replaceChildren(el);
  let rows = [];
  let stopped = false;

  async function load() {
    try {
      const reply = await api.get("/api/v1/schedulers");
      rows = reply.schedulers;
      setHidden(error, true);
    } catch (e) {
      if (e.status === 401) return;
      setText(error, `Could not list the schedulers: ${e.message}`);
      setHidden(error, false);
    }
    render();
  }

  function render() {
    const sorted = [...rows].sort((a, b) => (a.role === b.role ? a.id.localeCompare(b.id) : a.role === "leader" ? -1 : 1));
    const leader = sorted.find((s) => s.role === "leader");
    const top = Math.max(0, ...sorted.map((s) => s.applied_index || 0));
    const standbys = sorted.length - (leader ? 1 : 0);
    setText(
      summary,
      leader
        ? `${leader.url || leader.id} leads (epoch ${leader.epoch}); ${standbys} standing by.`
        : "No scheduler leads right now.",
    );
    keyed(body, sorted, (s) => s.id, createRow, (row, s) => updateRow(row, s, top));
  }

  function createRow() {
    const refs = {
      id: h("div.mono"),
      url: h("div.cell-sub.mono"),
      role: h("span.pill"),
      epoch: h("td.col-num"),
      applied: h("td.col-num"),
      behind: h("td.col-num"),
      seen: h("td.col-time"),
    };
    const row = h(
      "tr",
      { "data-testid": "scheduler-row" },
      h("td", null, refs.id, refs.url),
      h("td", null, refs.role),
      refs.epoch,
      refs.applied,
      refs.behind,
      refs.seen,
    );
    row._refs = refs;
    return row;
  }

  function updateRow(row, s, top) {
    const r = row._refs;
    row.dataset.role = s.role;
    setText(r.id, s.id);
    // The scheduler that serves this page, when its advertised URL is this page's origin.
    setText(r.url, s.url === location.origin ? `${s.url} · this page` : s.url || "");
    setVariant(r.role, "pill-", s.role === "leader" ? "running" : "paused");
    setText(r.role, s.role === "leader" ? "Leader" : "Standby");
    setText(r.epoch, s.epoch);
    setText(r.applied, fmtCount(s.applied_index));
    setText(r.behind, top - (s.applied_index || 0) ? fmtCount(top - s.applied_index) : "–");
    setText(r.seen, fmtAgo(s.seen));
    r.seen.title = fmtTime(s.seen);
  }

  load();
  let timer = 0;
  const loop = async () => {
    if (stopped) return;
    if (document.visibilityState === "visible" && state.me) await load();
    if (!stopped) timer = setTimeout(loop, POLL_MS);
  };
  timer = setTimeout(loop, POLL_MS);

  return {
    render() {},
    unmount() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
