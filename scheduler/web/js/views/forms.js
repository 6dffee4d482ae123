// Pieces the admin views share: labelled form fields and buttons that ask to be
// clicked twice before they do something that cannot be undone.

import { h, setText } from "../dom.js";

//: how long a button waits for its second click before it forgets the first
const CONFIRM_MS = 4000;

/** A labelled form field with a line of help. */
export function field(label, input, help) {
  return h(
    "label.admin-field",
    { for: input.id || undefined },
    h("span.field-label", { text: label }),
    input,
    help ? h("span.field-help", { text: help }) : null,
  );
}

/**
 * A button that arms on its first click (its label turns to ``armed``) and runs
 * ``action`` on a second click within CONFIRM_MS; the page has no modal dialogs.
 */
export function confirmButton(label, armed, action, attrs = {}) {
  const button = h("button.btn.btn-danger-outline.btn-sm", { type: "button", text: label, ...attrs });
  let timer = 0;
  const disarm = () => {
    clearTimeout(timer);
    timer = 0;
    button.classList.remove("armed");
    setText(button, label);
  };
  button.addEventListener("click", (e) => {
    e.stopPropagation();
    if (!timer) {
      button.classList.add("armed");
      setText(button, armed);
      timer = setTimeout(disarm, CONFIRM_MS);
      return;
    }
    disarm();
    action();
  });
  return button;
}
