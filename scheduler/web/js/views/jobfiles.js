// What a job left to download: its outputs archive, its latest checkpoint, its input
// archive and each attempt's log. Each is a plain link: a GET carries the session
// cookie (and needs no CSRF token), and the scheduler names the file it sends.

import * as api from "../api.js";
import { h, icon, keyed, setHidden, setText } from "../dom.js";

export function jobFiles() {
  const list = h("ul.file-list", { "data-testid": "job-files" });
  const el = h("section.panel.files-panel", null, h("div.panel-head", null, h("h2", { text: "Files" })), list);

  function update(job) {
    const files = [];
    if (job.outputs) {
      files.push({
        key: "outputs",
        label: "Outputs",
        note: "what the job left in /workspace/out (tar.gz)",
        href: api.outputsUrl(job.id),
        name: `${job.id}-outputs.tar.gz`,
        digest: job.outputs,
      });
    }
    if (job.checkpoint) {
      files.push({
        key: "checkpoint",
        label: "Checkpoint",
        note: `/checkpoint as attempt ${job.checkpoint_attempt} left it (tar)`,
        href: api.blobUrl(job.checkpoint),
        name: `${job.id}-checkpoint-${job.checkpoint_attempt}.tar`,
        digest: job.checkpoint,
      });
    }
    if (job.spec.inputs) {
      files.push({
        key: "inputs",
        label: "Inputs",
        note: "the archive unpacked into /workspace before it started",
        href: api.blobUrl(job.spec.inputs),
        name: `${job.id}-inputs.tar`,
        digest: job.spec.inputs,
      });
    }
    for (let n = job.attempt; n >= 1; n--) {
      files.push({
        key: `log-${n}`,
        label: `Log of attempt ${n}`,
        note: n === job.attempt && !job.finished_at ? "so far" : "",
        href: api.logUrl(job.id, n, { download: true }),
        name: `${job.id}-attempt-${n}.log`,
        digest: null,
      });
    }
    keyed(
      list,
      files,
      (f) => f.key,
      (f) => {
        const link = h("a.file-link", { "data-file": f.key }, icon("download"), h("span"));
        const note = h("span.muted.file-note");
        const digest = h("span.mono.muted.file-digest");
        const li = h("li.file", null, link, note, digest);
        li._refs = { link, note, digest };
        return li;
      },
      (li, f) => {
        const { link, note, digest } = li._refs;
        link.href = f.href;
        link.setAttribute("download", f.name);
        setText(link.lastChild, f.label);
        setText(note, f.note);
        setText(digest, f.digest ? f.digest.slice(0, 12) : "");
        digest.title = f.digest ? `sha256 ${f.digest}` : "";
        setHidden(digest, !f.digest);
      },
    );
  }

  return { el, update };
}
