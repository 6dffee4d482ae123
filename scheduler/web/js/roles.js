// What the logged-in role may do, so the page offers only that. The scheduler decides
// every request itself (scheduler/access.py, require_role in scheduler/http.py); this
// only keeps buttons away from people they would fail for.
//
//   admin   everything
//   submit  its own jobs, arrays, schedules and secrets (no drains, no shared secrets)
//   read    sees everything, changes nothing

import { state } from "./store.js";

const ALLOWED = {
  admin: new Set(["drain", "audit", "act", "schedule", "secret", "secret-shared"]),
  submit: new Set(["act", "schedule", "secret"]),
  read: new Set(),
};

/** Whether the logged-in role may do ``what`` (drain, audit, act, schedule, secret, secret-shared). */
export function can(what) {
  const role = state.me?.role;
  return Boolean(role && ALLOWED[role]?.has(what));
}

export function isAdmin() {
  return state.me?.role === "admin";
}

/** Whether the caller may change or delete this secret (an admin any; others their own unshared ones). */
export function mayChangeSecret(secret) {
  if (isAdmin()) return true;
  return can("secret") && !secret.shared && secret.owner === state.me?.name;
}

/** Whether the caller may change this schedule: a submit token sees only its own. */
export function mayChangeSchedule(schedule) {
  if (isAdmin()) return true;
  return can("schedule") && schedule.owner === state.me?.name;
}
