// The API client: JSON over fetch with the session cookie. Every request that changes
// something carries the session's CSRF token in X-CSRF-Token; the token that opened the
// session is never kept by the page.

let csrf = "";
let onUnauthorized = () => {};

export function setCsrf(value) {
  csrf = value || "";
}

/** Called when a request is refused with 401 (the session ended). */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

export async function request(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!SAFE.has(method) && csrf) headers["X-CSRF-Token"] = csrf;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", "the scheduler cannot be reached", {});
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    if (res.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(res.status, err.code || "http_error", err.message || res.statusText, err.details);
  }
  return data;
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body, opts) => request("POST", path, body ?? {}, opts);
export const del = (path, opts) => request("DELETE", path, undefined, opts);

// --- the calls the dashboard makes -----------------------------------------------------

export const session = {
  current: () => get("/api/v1/session", { quiet401: true }),
  login: (token) => post("/api/v1/session", { token }, { quiet401: true }),
  logout: () => del("/api/v1/session", { quiet401: true }),
};

export function listJobs({ state, limit = 200, cursor } = {}) {
  const q = new URLSearchParams({ limit: String(limit) });
  if (state) q.set("state", state);
  if (cursor) q.set("cursor", cursor);
  return get(`/api/v1/jobs?${q}`);
}

export const getJob = (id) => get(`/api/v1/jobs/${encodeURIComponent(id)}`);
export const listNodes = () => get("/api/v1/nodes");
export const getStats = () => get("/api/v1/stats");

/** Cancel or retry many jobs at once; resolves to {results: [{job_id, ok, error}]}. */
export const actOn = (action, ids) => post(`/api/v1/jobs/${action}`, { ids });
export const actOnJob = (action, id) => post(`/api/v1/jobs/${encodeURIComponent(id)}/${action}`);

export function logUrl(id, attempt, { download = false } = {}) {
  const q = new URLSearchParams({ attempt: String(attempt) });
  if (download) q.set("download", "1");
  return `/api/v1/jobs/${encodeURIComponent(id)}/logs?${q}`;
}

export const submitJob = (spec) => post("/api/v1/jobs", spec);

/** A job's outputs archive; a plain GET, so a link carries the session cookie. */
export const outputsUrl = (id) => `/api/v1/jobs/${encodeURIComponent(id)}/outputs`;
export const blobUrl = (digest) => `/api/v1/blobs/${encodeURIComponent(digest)}`;
