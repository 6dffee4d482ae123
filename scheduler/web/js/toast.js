// Short messages in the corner: what an action did, or why it was refused.

import { h, icon } from "./dom.js";

const SHOW_MS = 5000;

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const close = h("button.toast-close", { type: "button", "aria-label": "Dismiss" }, icon("x"));
  const el = h(`div.toast.toast-${kind}`, null, h("span.toast-text", { text: message }), close);
  const remove = () => {
    el.classList.add("leaving");
    setTimeout(() => el.remove(), 200);
  };
  close.addEventListener("click", remove);
  box.append(el);
  setTimeout(remove, kind === "error" ? SHOW_MS * 2 : SHOW_MS);
}
