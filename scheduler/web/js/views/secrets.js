// Secrets by name: who owns each, whether every token's jobs may use it, and when its
// value was set. A value is typed into a password field, sent once and forgotten: the
// field is emptied as soon as the request leaves, and the scheduler never sends a value
// back, so nothing on this page can show one.

import * as api from "../api.js";
import { fmtAgo, fmtTime, h, keyed, setHidden, setText } from "../dom.js";
import { can, mayChangeSecret } from "../roles.js";
import { toast } from "../toast.js";
import { confirmButton, field } from "./forms.js";

//: the list is read again this often while the view is open (no event tells of secrets)
const POLL_MS = 10000;

export function secretsView(container) {
  document.title = "Secrets · Berth";
  const body = h("tbody");
  const empty = h("div.empty", { hidden: true }, h("strong", { text: "No secrets yet." }));
  const error = h("div.callout.callout-error", { hidden: true });
  const form = setForm();
  const el = h(
    "div.page",
    null,
    h(
      "div.admin-head",
      null,
      h("h1", { text: "Secrets" }),
      h("p.muted.admin-lead", {
        text: "Jobs name a secret in their env ({\"secret\": NAME}); its value reaches only the node that runs them. Values are never shown.",
      }),
    ),
    error,
    can("secret") ? form.el : null,
    h(
      "section.panel",
      null,
      h("div.panel-head", null, h("h2", { text: "Stored secrets" })),
      empty,
      h(
        "div.table-wrap",
        null,
        h(
          "table.admin-table",
          { "data-testid": "secrets-table" },
          h(
            "thead",
            null,
            h("tr", null, ...["Name", "Owner", "Used by", "Value set", "Created", ""].map((t) => h("th", { text: t }))),
          ),
          body,
        ),
      ),
    ),
  );
  container.replaceChildren(el);
  let secrets = [];

  async function load() {
    try {
      secrets = (await api.get("/api/v1/secrets")).secrets;
      setHidden(error, true);
    } catch (e) {
      if (e.status === 401) return;
      setText(error, `Could not list the secrets: ${e.message}`);
      setHidden(error, false);
    }
    render();
  }

  function render() {
    setHidden(empty, secrets.length > 0);
    keyed(body, secrets, (s) => s.name, createRow, updateRow);
  }

  function createRow(s) {
    const refs = {
      name: h("span.mono"),
      owner: h("td"),
      scope: h("span.badge"),
      updated: h("td.col-time"),
      created: h("td.col-time"),
      del: confirmButton("Delete", "Delete for good", () => remove(row._secret, refs.del), { "data-testid": "delete-secret" }),
    };
    const row = h(
      "tr",
      { "data-testid": "secret-row", "data-secret": s.name },
      h("td", null, refs.name),
      refs.owner,
      h("td", null, refs.scope),
      refs.updated,
      refs.created,
      h("td.col-actions", null, refs.del),
    );
    row._refs = refs;
    return row;
  }

  function updateRow(row, s) {
    const r = row._refs;
    row._secret = s;
    setText(r.name, s.name);
    setText(r.owner, s.owner);
    setText(r.scope, s.shared ? "shared: every job" : `${s.owner}'s jobs`);
    r.scope.classList.toggle("badge-shared", s.shared);
    setText(r.updated, fmtAgo(s.updated_at));
    r.updated.title = fmtTime(s.updated_at);
    setText(r.created, fmtAgo(s.created_at));
    r.created.title = fmtTime(s.created_at);
    setHidden(r.del, !mayChangeSecret(s));
  }

  async function remove(s, button) {
    button.disabled = true;
    try {
      const gone = await api.del(`/api/v1/secrets/${encodeURIComponent(s.name)}`);
      const failed = gone.failed_jobs.length;
      toast(`Deleted ${s.name}${failed ? `; ${failed} queued job${failed === 1 ? "" : "s"} that needed it failed` : ""}`, "success");
    } catch (e) {
      toast(`Could not delete ${s.name}: ${e.message}`, "error");
    }
    button.disabled = false;
    await load();
  }

  function setForm() {
    const name = h("input#secret-name", {
      type: "text",
      required: true,
      maxLength: 128,
      autocomplete: "off",
      spellcheck: false,
      placeholder: "registry-login",
    });
    const value = h("input#secret-value", { type: "password", required: true, autocomplete: "new-password" });
    const shared = h("input#secret-shared", { type: "checkbox" });
    const submit = h("button.btn.btn-primary", { type: "submit", text: "Set secret" });
    const formError = h("p.form-error", { hidden: true, role: "alert" });
    const formEl = h(
      "form.admin-form",
      { "data-testid": "secret-form", autocomplete: "off" },
      field("Name", name, "Letters, digits, . _ -; an existing one of yours gets the new value."),
      field("Value", value, "Sent once; it cannot be read back."),
      can("secret-shared")
        ? h("label.check", null, shared, " Shared: every token's jobs may use it")
        : null,
      h("div.form-actions", null, submit),
      formError,
    );
    formEl.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = { name: name.value.trim(), value: value.value };
      if (can("secret-shared") && shared.checked) body.shared = true;
      // The value leaves the page with this request and is not kept anywhere else.
      value.value = "";
      submit.disabled = true;
      setHidden(formError, true);
      try {
        const info = await api.post("/api/v1/secrets", body);
        toast(`Secret ${info.name} set`, "success");
        name.value = "";
        shared.checked = false;
      } catch (err) {
        setText(formError, err.details?.field ? `${err.message} (${err.details.field})` : err.message);
        setHidden(formError, false);
      }
      submit.disabled = false;
      await load();
    });
    return {
      el: h("section.panel.admin-form-panel", null, h("div.panel-head", null, h("h2", { text: "Set a secret" })), formEl),
    };
  }

  load();
  const poll = setInterval(() => {
    if (document.visibilityState === "visible") load();
  }, POLL_MS);
  return {
    render() {},
    unmount() {
      clearInterval(poll);
    },
  };
}
