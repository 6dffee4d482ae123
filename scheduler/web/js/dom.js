// Small DOM helpers: element building, keyed list updates, and formatting.
// Text always goes through textContent, never innerHTML, so nothing from the API
// is ever interpreted as markup.

/** h("div#id.card.busy", {title: "x", onclick}, child, ...) -> HTMLElement */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.replace(/#[\w-]+/, "").split(".");
  const el = document.createElement(tag || "div");
  const id = spec.match(/#([\w-]+)/);
  if (id) el.id = id[1];
  if (classes.length) el.className = classes.join(" ");
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "class") {
        el.className = [el.className, value].filter(Boolean).join(" ");
      } else if (key === "text") {
        el.textContent = value;
      } else if (key === "dataset") {
        Object.assign(el.dataset, value);
      } else if (key === "style" && typeof value === "object") {
        Object.assign(el.style, value);
      } else if (key in el && typeof value !== "string") {
        el[key] = value;
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }
  append(el, children);
  return el;
}

/** Replace an element's children (arrays are flattened, null and false skipped). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** An inline SVG icon from a path list (24x24, stroked). */
export function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", `icon icon-${name}`);
  svg.setAttribute("aria-hidden", "true");
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

const ICONS = {
  bell: ["M6 8a6 6 0 0 1 12 0c0 7 3 9 3 9H3s3-2 3-9", "M10.3 21a1.94 1.94 0 0 0 3.4 0"],
  "bell-off": [
    "M8.7 3A6 6 0 0 1 18 8a21.3 21.3 0 0 0 .6 5",
    "M17 17H3s3-2 3-9a4.67 4.67 0 0 1 .3-1.7",
    "M10.3 21a1.94 1.94 0 0 0 3.4 0",
    "M2 2l20 20",
  ],
  x: ["M18 6 6 18", "M6 6l12 12"],
  retry: ["M3 12a9 9 0 0 1 15-6.7L21 8", "M21 3v5h-5", "M21 12a9 9 0 0 1-15 6.7L3 16", "M8 16H3v5"],
  back: ["M15 18l-6-6 6-6"],
  search: ["M11 19a8 8 0 1 0 0-16 8 8 0 0 0 0 16z", "M21 21l-4.3-4.3"],
  alert: [
    "M10.3 3.9 1.8 18a2 2 0 0 0 1.7 3h17a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z",
    "M12 9v4",
    "M12 17h.01",
  ],
  download: ["M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4", "M7 10l5 5 5-5", "M12 15V3"],
  down: ["M12 5v14", "M19 12l-7 7-7-7"],
  logout: ["M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4", "M16 17l5-5-5-5", "M21 12H9"],
  server: [
    "M4 3h16a1 1 0 0 1 1 1v6a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1z",
    "M4 13h16a1 1 0 0 1 1 1v6a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1v-6a1 1 0 0 1 1-1z",
    "M7 7h.01",
    "M7 17h.01",
  ],
  wrap: ["M3 6h18", "M3 12h15a3 3 0 1 1 0 6h-4", "M16 16l-2 2 2 2", "M3 18h7"],
};

/** Set text only when it changed (keeps selections and avoids layout work). */
export function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function setHidden(el, hidden) {
  if (el.hidden !== hidden) el.hidden = hidden;
}

/** Replace the classes that start with ``prefix`` by ``prefix + value``. */
export function setVariant(el, prefix, value) {
  const wanted = value ? prefix + value : null;
  for (const c of [...el.classList]) {
    if (c.startsWith(prefix) && c !== wanted) el.classList.remove(c);
  }
  if (wanted && !el.classList.contains(wanted)) el.classList.add(wanted);
}

export function setWidth(el, fraction) {
  const pct = `${(Math.max(0, Math.min(1, fraction || 0)) * 100).toFixed(1)}%`;
  if (el.style.width !== pct) el.style.width = pct;
}

/**
 * Make ``container``'s children match ``items`` in order, reusing the element made
 * for each key: ``create(item)`` makes one, ``update(el, item)`` refreshes it.
 */
export function keyed(container, items, key, create, update) {
  const old = container._keyed || new Map();
  const next = new Map();
  let cursor = container.firstChild;
  for (const item of items) {
    const k = key(item);
    let el = old.get(k);
    if (!el) el = create(item);
    update(el, item);
    next.set(k, el);
    if (el === cursor) {
      cursor = cursor.nextSibling;
    } else {
      container.insertBefore(el, cursor);
    }
  }
  for (const [k, el] of old) {
    if (!next.has(k)) el.remove();
  }
  container._keyed = next;
}

// --- formatting -----------------------------------------------------------------------

export function fmtCores(cpu) {
  if (cpu === null || cpu === undefined) return "–";
  return Number.isInteger(cpu) ? String(cpu) : cpu.toFixed(cpu < 10 ? 2 : 1).replace(/\.?0+$/, "");
}

export function fmtMb(mb) {
  if (mb === null || mb === undefined) return "–";
  if (mb >= 1024 * 1024) return `${trim(mb / (1024 * 1024))} TiB`;
  if (mb >= 1024) return `${trim(mb / 1024)} GiB`;
  return `${Math.round(mb)} MiB`;
}

function trim(n) {
  return n >= 100 ? n.toFixed(0) : n.toFixed(1).replace(/\.0$/, "");
}

export function fmtPercent(p) {
  if (p === null || p === undefined || Number.isNaN(p)) return "–";
  return `${Math.round(p)}%`;
}

export function fmtCount(n) {
  return (n || 0).toLocaleString("en-US");
}

/** "3 s ago", "5 min ago", "2 h ago", "4 d ago" */
export function fmtAgo(ts, now = Date.now()) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(ts)) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** How long until ts: "in 40 s", "in 12 min", "in 2 h", "in 3 d"; "due now" once it has come. */
export function fmtIn(ts, now = Date.now()) {
  const s = Math.round((Date.parse(ts) - now) / 1000);
  if (s <= 0) return "due now";
  if (s < 60) return `in ${s} s`;
  if (s < 3600) return `in ${Math.floor(s / 60)} min`;
  if (s < 86400) return `in ${Math.floor(s / 3600)} h`;
  return `in ${Math.floor(s / 86400)} d`;
}

/** A duration in ms as "850 ms", "42 s", "3 min 05 s", "2 h 10 min". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function fmtTime(ts) {
  if (!ts) return "–";
  const d = new Date(ts);
  return d.toLocaleString("en-GB", {
    year: "numeric",
    month: "short",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/** How long a job ran (or has run so far). */
export function jobDuration(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return end - Date.parse(job.started_at);
}

export const STATE_LABEL = {
  queued: "Queued",
  assigned: "Assigned",
  running: "Running",
  paused: "Paused",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  timed_out: "Timed out",
  idle: "Idle",
  busy: "Busy",
  unhealthy: "Unhealthy",
  offline: "Offline",
};

export const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);

/** A state pill, updated in place with ``setPill``. */
export function pill(state) {
  const el = h("span.pill");
  setPill(el, state);
  return el;
}

export function setPill(el, state) {
  setVariant(el, "pill-", state);
  setText(el, STATE_LABEL[state] || state);
}

/** The label of a job: its name, or its image when it has none. */
export function jobTitle(job) {
  return job.name || job.spec?.image || job.id;
}
