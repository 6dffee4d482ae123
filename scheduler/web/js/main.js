// The dashboard's entry point: the session, the page frame, routing and the live stream.
//
// Routes (in the URL fragment, so the scheduler serves one page):
//   #/            the overview: stats, nodes, jobs
//   #/jobs/<id>   one job: spec, attempts, progress and its live log
//   #/submit      submit a job; #/submit?from=<id>: run that job again with changes
//   #/arrays, #/arrays/<id>          job arrays, and one array's tasks
//   #/schedules, #/schedules/<name>  periodic jobs, and one schedule
//   #/secrets     secrets by name (never a value)
//   #/schedulers  the schedulers sharing the store: leader and standbys
//   #/nodes/<id>  one node, with its drain controls and history

import * as api from "./api.js";
import { h, icon, setText, setVariant } from "./dom.js";
import { LiveStream } from "./live.js";
import * as notify from "./notify.js";
import * as store from "./store.js";
import { toast } from "./toast.js";
import { arrayView, arraysView } from "./views/arrays.js";
import { jobView } from "./views/job.js";
import { nodeView } from "./views/node.js";
import { loginView } from "./views/login.js";
import { overviewView } from "./views/overview.js";
import { submitView } from "./views/submit.js";
import { schedulersView } from "./views/schedulers.js";
import { scheduleView, schedulesView } from "./views/schedules.js";
import { secretsView } from "./views/secrets.js";

const root = document.getElementById("app");
let view = null;
let shell = null;
let live = null;
let unsubscribe = null;

// The views besides the overview and the job page: [path pattern, nav link, view(main, ...groups)].
const ADMIN_ROUTES = [
  [/^\/arrays$/, "arrays", arraysView],
  [/^\/arrays\/([^/]+)$/, "arrays", arrayView],
  [/^\/schedules$/, "schedules", schedulesView],
  [/^\/schedules\/([^/]+)$/, "schedules", scheduleView],
  [/^\/secrets$/, "secrets", secretsView],
  [/^\/schedulers$/, "schedulers", schedulersView],
  [/^\/nodes\/([^/]+)$/, "overview", nodeView],
];
// Every role sees these; what a role may not change is hidden inside each (roles.js).
const ADMIN_NAV = [
  ["arrays", "#/arrays", "Arrays"],
  ["schedules", "#/schedules", "Schedules"],
  ["secrets", "#/secrets", "Secrets"],
  ["schedulers", "#/schedulers", "Schedulers"],
];

const CONN_LABEL = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
};

async function boot() {
  api.whenUnauthorized(() => loggedOut("Your session has ended. Log in again."));
  let me = null;
  try {
    me = await api.session.current();
  } catch (e) {
    if (e.status !== 401) {
      root.classList.remove("booting");
      root.replaceChildren(
        h("div.boot-error", null, h("h1", { text: "The scheduler cannot be reached" }), h("p", { text: e.message })),
      );
      setTimeout(boot, 3000);
      return;
    }
  }
  root.classList.remove("booting");
  if (me) await loggedIn(me);
  else showLogin();
}

function showLogin(notice) {
  teardown();
  document.title = "Log in · Berth";
  view = loginView(root, { onLoggedIn: loggedIn, notice });
}

async function loggedIn(me) {
  api.setCsrf(me.csrf);
  store.state.me = me;
  buildShell();
  route();
  let since = 0;
  try {
    since = await store.loadAll();
  } catch (e) {
    if (e.status === 401) return;
    toast(`Could not load the cluster: ${e.message}`, "error");
  }
  if (store.state.me !== me) return; // logged out meanwhile
  live = new LiveStream({
    onEvent: store.apply,
    onLost: () => store.loadAll().catch(() => {}),
    onStatus: setConn,
    canReconnect: async () => {
      try {
        await api.session.current();
        // Whatever was missed while the stream was down is replayed from its last index;
        // the lists are loaded again too in case the history was pruned meanwhile.
        store.loadAll().catch(() => {});
        return true;
      } catch (e) {
        if (e.status === 401) loggedOut("Your session has ended. Log in again.");
        return e.status !== 401;
      }
    },
  });
  live.start(since);
  store.startPolling();
  notify.checkWatched();
}

function loggedOut(notice) {
  if (!store.state.me) return;
  store.state.me = null;
  api.setCsrf("");
  showLogin(notice);
}

async function logout() {
  try {
    await api.session.logout();
  } catch {
    // Logged out on this side whatever the scheduler says.
  }
  loggedOut();
}

function teardown() {
  if (live) live.stop();
  live = null;
  store.stopPolling();
  if (view) view.unmount();
  view = null;
  if (unsubscribe) unsubscribe();
  unsubscribe = null;
  shell = null;
  store.reset();
}

function setConn(status) {
  store.state.conn = status;
  if (!shell) return;
  setVariant(shell.conn, "conn-", status);
  setText(shell.connLabel, CONN_LABEL[status] || status);
  shell.conn.title =
    status === "live"
      ? "Receiving live events from the scheduler"
      : "The event stream is down; it reconnects and replays what was missed";
}

function buildShell() {
  const me = store.state.me;
  const connLabel = h("span.conn-label");
  const conn = h("span.conn", { role: "status", "data-testid": "connection" }, h("span.conn-dot"), connLabel);
  const main = h("main.main");
  const header = h(
    "header.topbar",
    null,
    h(
      "div.topbar-inner",
      null,
      h("a.brand", { href: "#/" }, h("img.logo", { src: "/ui/favicon.svg", alt: "", width: 26, height: 26 }), "Berth"),
      h(
        "nav.nav",
        null,
        h("a.nav-link", { href: "#/", "data-route": "overview" }, "Overview"),
        ...ADMIN_NAV.map(([key, href, label]) => h("a.nav-link", { href, "data-route": key }, label)),
      ),
      h("div.spacer"),
      conn,
      h(
        "div.user",
        { title: `Logged in as ${me.name} (${me.role})` },
        h("span.avatar", { text: (me.name || "?").slice(0, 1).toUpperCase() }),
        h("span.user-name", { text: me.name }),
        h("span.role", { text: me.role }),
      ),
      h("button.btn.btn-ghost.btn-sm#logout", { type: "button", onclick: logout }, icon("logout"), "Log out"),
    ),
  );
  root.replaceChildren(header, main);
  shell = { conn, connLabel, main, header };
  setConn(store.state.conn);
  unsubscribe = store.subscribe((parts) => view && view.render(parts));
}

function route() {
  if (!shell) return;
  const hash = location.hash.replace(/^#/, "") || "/";
  const m = hash.match(/^\/jobs\/([^/]+)$/);
  const admin = m ? null : matchAdmin(hash);
  if (view) view.unmount();
  for (const link of shell.header.querySelectorAll(".nav-link")) {
    const active = admin ? admin.nav : m ? null : "overview";
    link.classList.toggle("active", link.dataset.route === active);
  }
  window.scrollTo(0, 0);
  const submit = hash.match(/^\/submit(?:\?from=([^&]+))?$/);
  if (submit) {
    store.closeJob();
    for (const link of shell.header.querySelectorAll(".nav-link")) link.classList.remove("active");
    view = submitView(shell.main, { from: submit[1] ? decodeURIComponent(submit[1]) : null });
    return;
  }
  if (admin) {
    store.closeJob();
    view = admin.view(shell.main, ...admin.args);
  } else if (m) {
    const id = decodeURIComponent(m[1]);
    store.openJob(id);
    view = jobView(shell.main, id);
  } else {
    store.closeJob();
    document.title = "Berth";
    view = overviewView(shell.main);
  }
  view.render(new Set(["stats", "nodes", "jobs", "job"]));
}

function matchAdmin(hash) {
  for (const [pattern, nav, make] of ADMIN_ROUTES) {
    const found = hash.match(pattern);
    if (found) return { nav, view: make, args: found.slice(1).map(decodeURIComponent) };
  }
  return null;
}

window.addEventListener("hashchange", route);
store.onJobEnd(notify.jobEnded);
boot();
