// A job's place among its dependencies, drawn as a small layered graph: the jobs it
// waits for (followed up depends_on, each fetched), the jobs that wait for it (those of
// the loaded job list whose depends_on lead to it), each a box coloured by its state
// that links to its page. Layers go left to right: a job stands one column right of
// the furthest job it waits for.

import * as api from "../api.js";
import { STATE_LABEL, TERMINAL, h, setHidden } from "../dom.js";
import { state } from "../store.js";

const SVG = "http://www.w3.org/2000/svg";
//: jobs drawn at most (the graph is a picture of the neighbourhood, not the whole DAG)
const MAX_NODES = 40;
//: ancestors not in the job list are fetched again at most this often while any runs
const REFRESH_MS = 5000;
const BOX_W = 200;
const BOX_H = 40;
const GAP_X = 56;
const GAP_Y = 16;
const PAD = 8;

export function depGraph(jobId) {
  const canvas = h("div.depgraph-canvas");
  const legend = h("p.muted.depgraph-note");
  const el = h(
    "section.panel.depgraph-panel",
    { hidden: true, "data-testid": "dep-graph" },
    h("div.panel-head", null, h("h2", { text: "Dependencies" })),
    canvas,
    legend,
  );
  //: ancestors fetched from the scheduler: id -> job (or {id, missing: message})
  const fetched = new Map();
  let depsKey = null;
  let fetchedAt = 0;
  let loading = false;
  let drawnKey = "";

  function known(id) {
    if (id === jobId && state.job?.id === jobId) return state.job;
    return state.jobs.get(id) || fetched.get(id) || null;
  }

  async function fetchAncestors(job) {
    loading = true;
    const seen = new Set([job.id]);
    let frontier = depIds(job);
    try {
      while (frontier.length && seen.size < MAX_NODES) {
        const next = [];
        for (const id of frontier) {
          if (seen.has(id) || seen.size >= MAX_NODES) continue;
          seen.add(id);
          let dep = state.jobs.get(id);
          if (!dep) {
            try {
              dep = await api.getJob(id);
            } catch (e) {
              dep = { id, missing: e.status === 404 ? "no longer stored" : e.message };
            }
          }
          fetched.set(id, dep);
          next.push(...depIds(dep));
        }
        frontier = next;
      }
    } finally {
      loading = false;
      fetchedAt = performance.now();
    }
    update(known(jobId));
  }

  function update(job) {
    if (!job) return;
    const key = JSON.stringify(job.spec.depends_on || []);
    const stale = performance.now() - fetchedAt > REFRESH_MS && [...fetched.values()].some((j) => !j.missing && !TERMINAL.has(j.state) && !state.jobs.has(j.id));
    if (!loading && (key !== depsKey || stale)) {
      depsKey = key;
      fetchAncestors(job);
    }
    const graph = collect(job);
    setHidden(el, graph.nodes.length < 2);
    if (graph.nodes.length < 2) return;
    const drawKey = JSON.stringify(graph.nodes.map((n) => [n.id, n.state, n.label, n.layer, n.row])) + JSON.stringify(graph.edges);
    if (drawKey === drawnKey) return;
    drawnKey = drawKey;
    canvas.replaceChildren(draw(graph));
    legend.textContent = graph.truncated
      ? `Showing ${graph.nodes.length} jobs; there are more.`
      : "Jobs waiting for others stand to their right; dependants come from the jobs loaded in the list.";
  }

  /** The nodes (with layer and row) and edges around the job. */
  function collect(job) {
    const ids = new Set([job.id]);
    // Upward: what it waits for, as far as fetched.
    const up = [...depIds(job)];
    while (up.length && ids.size < MAX_NODES) {
      const id = up.shift();
      if (ids.has(id)) continue;
      ids.add(id);
      const dep = known(id);
      if (dep) up.push(...depIds(dep));
    }
    // Downward: loaded jobs that wait for it, and for those, and so on.
    const down = new Set([job.id]);
    let grew = true;
    while (grew && ids.size < MAX_NODES) {
      grew = false;
      for (const j of state.jobs.values()) {
        if (down.has(j.id) || ids.size >= MAX_NODES) continue;
        if (depIds(j).some((d) => down.has(d))) {
          down.add(j.id);
          ids.add(j.id);
          grew = true;
        }
      }
    }
    const nodes = [...ids].map((id) => {
      const j = known(id);
      return {
        id,
        state: j?.missing ? "unknown" : j?.state || "unknown",
        label: j && !j.missing ? j.name || j.spec?.image || id : id,
        note: j?.missing || null,
        current: id === job.id,
        parents: j && !j.missing ? depIds(j).filter((d) => ids.has(d)) : [],
      };
    });
    const byId = new Map(nodes.map((n) => [n.id, n]));
    // Longest path from a job that waits for none of those shown; a cycle cannot be
    // submitted, and the bound stops the loop whatever the data.
    for (const n of nodes) n.layer = 0;
    for (let pass = 0, changed = true; changed && pass < nodes.length; pass++) {
      changed = false;
      for (const n of nodes) {
        for (const p of n.parents) {
          const want = byId.get(p).layer + 1;
          if (want > n.layer) {
            n.layer = want;
            changed = true;
          }
        }
      }
    }
    const layers = new Map();
    for (const n of nodes.sort((a, b) => a.layer - b.layer || a.id.localeCompare(b.id))) {
      const row = layers.get(n.layer) || [];
      n.row = row.length;
      row.push(n);
      layers.set(n.layer, row);
    }
    const edges = nodes.flatMap((n) => n.parents.map((p) => [p, n.id]));
    return { nodes, edges, byId, layers, truncated: ids.size >= MAX_NODES };
  }

  return { el, update };
}

function depIds(job) {
  return (job?.spec?.depends_on || []).map((d) => (typeof d === "string" ? d : d.job));
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

function draw({ nodes, edges, byId, layers }) {
  const cols = Math.max(...nodes.map((n) => n.layer)) + 1;
  const rows = Math.max(...[...layers.values()].map((l) => l.length));
  const width = PAD * 2 + cols * BOX_W + (cols - 1) * GAP_X;
  const height = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y;
  const pos = (n) => {
    // Each column is centred on the tallest.
    const inLayer = layers.get(n.layer).length;
    const offset = ((rows - inLayer) * (BOX_H + GAP_Y)) / 2;
    return { x: PAD + n.layer * (BOX_W + GAP_X), y: PAD + offset + n.row * (BOX_H + GAP_Y) };
  };
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: "depgraph",
    role: "img",
    "aria-label": `${nodes.length} jobs and their dependencies`,
  });
  root.append(
    svg(
      "defs",
      null,
      svg(
        "marker",
        { id: "dg-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        svg("path", { d: "M0 0L10 5L0 10z", class: "dg-arrow" }),
      ),
    ),
  );
  for (const [from, to] of edges) {
    const a = pos(byId.get(from));
    const b = pos(byId.get(to));
    const x1 = a.x + BOX_W;
    const y1 = a.y + BOX_H / 2;
    const x2 = b.x - 2;
    const y2 = b.y + BOX_H / 2;
    const mid = (x1 + x2) / 2;
    root.append(
      svg("path", {
        d: `M${x1} ${y1}C${mid} ${y1} ${mid} ${y2} ${x2} ${y2}`,
        class: "dg-edge",
        "marker-end": "url(#dg-arrow)",
        "data-from": from,
        "data-to": to,
      }),
    );
  }
  for (const n of nodes) {
    const { x, y } = pos(n);
    const title = svg("title");
    title.textContent = `${n.label} (${n.id}): ${STATE_LABEL[n.state] || n.state}${n.note ? ` — ${n.note}` : ""}`;
    const name = svg("text", { x: x + 10, y: y + 17, class: "dg-name" });
    name.textContent = clip(n.label, 26);
    const sub = svg("text", { x: x + 10, y: y + 32, class: "dg-sub" });
    sub.textContent = `${STATE_LABEL[n.state] || n.state} · ${clip(n.id, 20)}`;
    root.append(
      svg(
        "a",
        {
          href: `#/jobs/${encodeURIComponent(n.id)}`,
          class: `dg-node dg-state-${n.state}${n.current ? " dg-current" : ""}`,
          "data-job": n.id,
          "data-state": n.state,
          "data-layer": n.layer,
        },
        title,
        svg("rect", { x, y, width: BOX_W, height: BOX_H, rx: 7 }),
        name,
        sub,
      ),
    );
  }
  return root;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}
