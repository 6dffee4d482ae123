// Browser notifications, opt in per job: "watch" a job and get a notification when it
// ends. The watched ids are kept in localStorage (job ids only, nothing secret).

import * as api from "./api.js";
import { STATE_LABEL, TERMINAL, jobTitle } from "./dom.js";

const KEY = "berth.watched";

export function supported() {
  return "Notification" in window;
}

function load() {
  try {
    return new Set(JSON.parse(localStorage.getItem(KEY) || "[]"));
  } catch {
    return new Set();
  }
}

function save(ids) {
  localStorage.setItem(KEY, JSON.stringify([...ids]));
}

export function isWatched(id) {
  return load().has(id);
}

/** Ask for permission if needed, then watch; resolves to true when watching. */
export async function watch(id) {
  if (!supported()) throw new Error("this browser cannot show notifications");
  let permission = Notification.permission;
  if (permission === "default") permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error("notifications are blocked for this site");
  const ids = load();
  ids.add(id);
  save(ids);
  return true;
}

export function unwatch(id) {
  const ids = load();
  ids.delete(id);
  save(ids);
}

/** Tell the user a watched job ended (once), and stop watching it. */
export function jobEnded(job, event) {
  const id = event?.job_id || job?.id;
  if (!id || !isWatched(id)) return;
  unwatch(id);
  if (!supported() || Notification.permission !== "granted") return;
  const state = event?.data?.state || job?.state;
  const name = job ? jobTitle(job) : id;
  const exit = event?.data?.exit_code ?? job?.exit_code;
  const reason = event?.data?.reason || job?.reason || "";
  const body = [
    `Job ${id}`,
    exit !== undefined && exit !== null ? `exit code ${exit}` : "",
    reason,
  ]
    .filter(Boolean)
    .join(" · ");
  const note = new Notification(`${name}: ${(STATE_LABEL[state] || state).toLowerCase()}`, {
    body,
    tag: `berth-job-${id}`,
    icon: "/ui/favicon.svg",
  });
  note.onclick = () => {
    window.focus();
    location.hash = `#/jobs/${encodeURIComponent(id)}`;
    note.close();
  };
}

/** Jobs that ended while the page was closed are reported once it opens. */
export async function checkWatched() {
  for (const id of load()) {
    try {
      const job = await api.getJob(id);
      if (TERMINAL.has(job.state)) jobEnded(job, null);
    } catch (e) {
      if (e.status === 404) unwatch(id);
    }
  }
}
