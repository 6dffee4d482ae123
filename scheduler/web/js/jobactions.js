// What may be done to a job, and by whom, as the scheduler decides it
// (scheduler/access.py, common/states.py): the pages hide what the logged-in role may
// not do; the scheduler refuses it all the same.

import * as api from "./api.js";

/** The states each action takes a job from. */
export const ACTION_FROM = {
  cancel: new Set(["queued", "assigned", "running", "paused"]),
  retry: new Set(["failed", "cancelled", "timed_out"]),
  pause: new Set(["running"]),
  resume: new Set(["paused"]),
};

export const ACTION_LABEL = { cancel: "Cancel", retry: "Retry", pause: "Pause", resume: "Resume" };
export const ACTION_DONE = { cancel: "Cancelled", retry: "Retried", pause: "Paused", resume: "Resumed" };

// A read token sees everything and changes nothing; a submit token acts on the jobs it
// sees (its own, or every job with all_jobs); an admin on every job.
const CHANGERS = new Set(["admin", "submit"]);

/** May this login cancel, retry, pause and resume the jobs it sees? */
export function mayChangeJobs(me) {
  return Boolean(me && CHANGERS.has(me.role));
}

/** May this login submit jobs? */
export function maySubmit(me) {
  return Boolean(me && CHANGERS.has(me.role));
}

export function canAct(action, job) {
  return Boolean(job && ACTION_FROM[action].has(job.state));
}

/** One action on one job; resolves to the job as the scheduler answered it. */
export function actOnJob(action, id) {
  return api.actOnJob(action, id);
}

/** One action on many jobs, those whose state allows it; {ok: [...], refused: [...]}. */
export async function actOnMany(action, jobs) {
  const ids = jobs.filter((j) => canAct(action, j)).map((j) => j.id);
  if (!ids.length) return { ok: [], refused: [] };
  const { results } = await api.actOn(action, ids);
  return { ok: results.filter((r) => r.ok), refused: results.filter((r) => !r.ok) };
}

/** "Paused 3 jobs" or "Paused 2, 1 refused: why" and the toast's kind. */
export function summarise(action, { ok, refused }) {
  const verb = ACTION_DONE[action];
  if (refused.length) {
    const why = refused[0].error?.message || "refused";
    return [`${verb} ${ok.length}, ${refused.length} refused: ${why}`, ok.length ? "warn" : "error"];
  }
  return [`${verb} ${ok.length} job${ok.length === 1 ? "" : "s"}`, "success"];
}
