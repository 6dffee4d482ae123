// The login page: a token is exchanged once for an HttpOnly session cookie.

import * as api from "../api.js";
import { h } from "../dom.js";

export function loginView(container, { onLoggedIn, notice }) {
  const input = h("input#token", {
    type: "password",
    name: "token",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "Paste an admin, submit or read token",
    required: true,
    "aria-describedby": "token-help",
  });
  const error = h("p.form-error", { role: "alert", hidden: true });
  const button = h("button.btn.btn-primary.btn-block", { type: "submit" }, "Log in");
  const form = h(
    "form.login-form",
    { novalidate: true },
    h("label.field-label", { for: "token" }, "Access token"),
    input,
    h(
      "p#token-help.field-help",
      null,
      "The scheduler wrote ",
      h("code", { text: "admin.token" }),
      " into its state directory on first start. The token is exchanged for a session cookie and is not kept by this page.",
    ),
    error,
    button,
  );
  if (notice) {
    error.textContent = notice;
    error.hidden = false;
    error.classList.add("form-notice");
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) {
      showError("Paste a token first.");
      return;
    }
    button.disabled = true;
    button.textContent = "Logging in…";
    try {
      const me = await api.session.login(token);
      input.value = "";
      onLoggedIn(me);
    } catch (err) {
      showError(err.status === 401 ? "That token is not valid here." : err.message);
      button.disabled = false;
      button.textContent = "Log in";
      input.select();
    }
  });

  function showError(message) {
    error.classList.remove("form-notice");
    error.textContent = message;
    error.hidden = false;
  }

  const page = h(
    "div.login-page",
    null,
    h(
      "div.login-card",
      null,
      h(
        "div.login-brand",
        null,
        h("img.logo", { src: "/ui/favicon.svg", alt: "", width: 40, height: 40 }),
        h("div", null, h("h1", { text: "Berth" }), h("p", { text: "Cluster scheduler for container jobs" })),
      ),
      form,
    ),
    h("p.login-foot", null, "API: ", h("code", { text: `${location.origin}/api/v1` })),
  );
  container.replaceChildren(page);
  input.focus();
  return { render() {}, unmount() {} };
}
