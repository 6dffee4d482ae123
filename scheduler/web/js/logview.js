// A live log: an EventSource on the job's log route (SSE `log` frames whose id is the
// byte offset after them, then one `end` frame). The browser resumes from that offset
// by itself after a dropped connection. Lines are coloured by simple heuristics, added
// once per animation frame, and the view follows the end unless the user scrolled up.

import * as api from "./api.js";
import { h, icon, setHidden, setText } from "./dom.js";

//: lines kept on the page; older ones are dropped (the download has everything)
const MAX_LINES = 10000;
//: closer than this to the bottom (px) counts as "at the end"
const STICK_PX = 24;
const RETRY_MS = 2000;

const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;

/** "error" | "warning" | "success" | "progress" | "system" | "info" */
export function levelOf(line) {
  const text = line.trimStart();
  if (text.startsWith("::progress::")) return "progress";
  if (text.startsWith("[berth:")) return "system";
  if (/\b(error|errors|fatal|panic|exception|traceback|failed|failure|critical|crit|err)\b/i.test(text)) return "error";
  if (/\b(warn|warning|warnings|deprecated|deprecation)\b/i.test(text)) return "warning";
  if (/\b(success|successful|successfully|succeeded|done|completed|complete|passed|ok)\b/i.test(text) || /[✓✔]/.test(text)) {
    return "success";
  }
  return "info";
}

export class LogView {
  /** onStatus({state: "waiting"|"following"|"reconnecting"|"ended", end}) */
  constructor({ onStatus }) {
    this.onStatus = onStatus;
    this.lines = h("div.log-lines", { role: "log", "aria-live": "off", "data-testid": "log" });
    this.placeholder = h("div.log-empty", { text: "Waiting for output…" });
    this.trimmed = h("div.log-trimmed", { hidden: true });
    this.jump = h(
      "button.log-jump",
      { type: "button", hidden: true, "data-testid": "log-jump" },
      icon("down"),
      h("span"),
    );
    this.scroller = h("div.log-scroll", { tabindex: "0" }, this.trimmed, this.placeholder, this.lines);
    this.el = h("div.log", null, this.scroller, this.jump);
    // ::progress:: lines are the job telling its progress; they can be hidden from the
    // view (they stay counted and numbered, and in the download).
    const progress = h("input", { type: "checkbox", checked: true, "data-testid": "show-progress" });
    progress.addEventListener("change", () => this.setShowProgress(progress.checked));
    this.progressToggle = h("label.toggle", { title: "Show the ::progress:: lines the job wrote" }, progress, "Progress lines");
    this.jump.addEventListener("click", () => this.toEnd());
    this.scroller.addEventListener("scroll", () => {
      this.stick = this.atEnd();
      if (this.stick) this.setUnseen(0);
    });
    this.reset();
  }

  reset() {
    this.stopStream();
    this.lines.replaceChildren();
    this.pending = [];
    this.partial = "";
    this.count = 0;
    this.dropped = 0;
    this.unseen = 0;
    this.stick = true;
    this.frame = 0;
    setHidden(this.placeholder, false);
    setText(this.placeholder, "Waiting for output…");
    setHidden(this.trimmed, true);
    this.setUnseen(0);
  }

  /** Stream the log of one attempt from the start. */
  follow(jobId, attempt) {
    this.reset();
    this.jobId = jobId;
    this.attempt = attempt;
    this.offset = 0;
    this.open();
  }

  open() {
    const url = `${api.logUrl(this.jobId, this.attempt)}&offset=${this.offset}`;
    const es = new EventSource(url);
    this.source = es;
    this.onStatus({ state: "following" });
    es.addEventListener("log", (msg) => {
      const id = Number(msg.lastEventId);
      if (id) this.offset = id;
      this.push(msg.data);
    });
    es.addEventListener("end", (msg) => {
      let end = {};
      try {
        end = JSON.parse(msg.data);
      } catch {
        // keep the defaults
      }
      this.stopStream();
      this.finish();
      if (this.count === 0 && this.pending.length === 0) setText(this.placeholder, "This attempt wrote no output.");
      this.onStatus({ state: "ended", end });
    });
    es.onopen = () => this.onStatus({ state: "following" });
    es.onerror = () => {
      if (es !== this.source) return;
      this.onStatus({ state: "reconnecting" });
      if (es.readyState === EventSource.CLOSED) {
        // Refused (for example the job was deleted): try again from the offset we have.
        this.source = null;
        this.retry = setTimeout(() => this.open(), RETRY_MS);
      }
    };
  }

  stopStream() {
    clearTimeout(this.retry);
    if (this.source) {
      this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  }

  destroy() {
    this.stopStream();
    cancelAnimationFrame(this.frame);
  }

  /** Text as it arrives: complete lines are queued, the last partial line is held. */
  push(text) {
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop();
    for (const p of parts) this.pending.push(p);
    this.schedule();
  }

  /** The stream ended: show the last line even without its newline. */
  finish() {
    if (this.partial) {
      this.pending.push(this.partial);
      this.partial = "";
    }
    this.schedule();
  }

  schedule() {
    if (!this.frame && this.pending.length) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const batch = this.pending;
    this.pending = [];
    if (!batch.length) return;
    const frag = document.createDocumentFragment();
    const start = batch.length > MAX_LINES ? batch.length - MAX_LINES : 0;
    this.count += start;
    this.dropped += start;
    for (let i = start; i < batch.length; i++) {
      this.count += 1;
      frag.append(this.lineElement(batch[i], this.count));
    }
    this.lines.append(frag);
    setHidden(this.placeholder, true);
    let excess = this.lines.childElementCount - MAX_LINES;
    if (excess > 0) this.dropped += excess;
    while (excess-- > 0) this.lines.firstElementChild.remove();
    if (this.dropped) {
      setHidden(this.trimmed, false);
      setText(this.trimmed, `${this.dropped.toLocaleString("en-US")} earlier lines are not shown here; the download has them all.`);
    }
    if (this.stick) this.toEnd();
    else this.setUnseen(this.unseen + (batch.length - start));
  }

  lineElement(raw, n) {
    // A carriage return redraws the line in a terminal: keep what was drawn last.
    const cr = raw.lastIndexOf("\r", raw.length - 2);
    const text = (cr >= 0 ? raw.slice(cr + 1) : raw).replace(/\r$/, "").replace(ANSI, "");
    const level = levelOf(text);
    return h(
      `div.ll.ll-${level}`,
      null,
      h("span.ln", { text: String(n), "aria-hidden": "true" }),
      h("span.lt", { text: text || " " }),
    );
  }

  atEnd() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_PX;
  }

  toEnd() {
    this.stick = true;
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.setUnseen(0);
  }

  setUnseen(n) {
    this.unseen = n;
    setHidden(this.jump, n === 0);
    setText(this.jump.lastChild, n === 1 ? "1 new line" : `${n.toLocaleString("en-US")} new lines`);
  }

  setWrap(on) {
    this.el.classList.toggle("log-wrap", on);
  }

  setShowProgress(on) {
    this.el.classList.toggle("log-hide-progress", !on);
    if (this.stick) this.toEnd();
  }
}
