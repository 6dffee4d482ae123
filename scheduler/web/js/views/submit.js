// Submit a job (#/submit), or run one again with changes (#/submit?from=ID): a form
// drawn from the JobSpec of the scheduler's OpenAPI document, checked against it in
// the page, with an "edit as JSON" mode. What the scheduler still refuses (400) is
// shown on the field its error names ($.depends_on[0] on depends_on).

import * as api from "../api.js";
import { fill, h, icon, setHidden, setText } from "../dom.js";
import { maySubmit } from "../jobactions.js";
import { boundsText, describe, loadComponents, validate } from "../jobschema.js";
import { state } from "../store.js";
import { toast } from "../toast.js";

//: fields shown first, in this order; the rest go under "More options"
const PRIMARY = ["name", "image", "command", "resources", "env", "labels", "constraints", "depends_on", "priority", "timeout_s"];
//: the prefix of the concurrency group of an array with max_concurrent (scheduler/arrays.py)
const ARRAY_GROUP = "array:";
//: the words a field is labelled with, where its name alone says less
const LABELS = {
  timeout_s: "Timeout (s)",
  memory_mb: "Memory (MiB)",
  cpu: "CPU (cores)",
  gpus: "GPUs",
  depends_on: "Depends on",
  env: "Environment",
  constraints: "Constraints",
  labels: "Labels",
  gpu_model: "GPU model",
  gpu_memory_mb: "GPU memory (MiB)",
  max_concurrent: "Max concurrent",
};
//: what each kind of text box expects, in words
const HOW = {
  map: "one KEY=VALUE per line",
  refs: "one job id per line, optionally followed by when it lets this one start",
  json: "JSON",
};

export function submitView(container, { from = null } = {}) {
  const title = h("h1.page-title", { text: from ? "Run again with changes" : "Submit a job" });
  const sub = h("p.muted.submit-sub");
  const status = h("div.empty", { text: "Loading the job schema…" });
  const formBox = h("div.submit-body");
  const page = h(
    "div.page.submit-page",
    { "data-testid": "submit-page" },
    h("a.back", { href: from ? `#/jobs/${encodeURIComponent(from)}` : "#/" }, icon("back"), from ? "Back to the job" : "Overview"),
    h("header.submit-head", null, title, sub),
    status,
    formBox,
  );
  container.replaceChildren(page);
  document.title = `${from ? "Run again" : "Submit a job"} · Berth`;
  let alive = true;

  if (!maySubmit(state.me)) {
    setText(status, `This login (${state.me?.role}) may not submit jobs.`);
    status.dataset.testid = "submit-refused";
    return { render() {}, unmount() {} };
  }
  if (from) {
    sub.append("A new job from the spec of ", h("a.mono", { href: `#/jobs/${encodeURIComponent(from)}`, text: from }), "; change what you need and submit.");
  }

  Promise.all([loadComponents(), from ? sourceSpec(from) : null])
    .then(([components, spec]) => {
      if (!alive) return;
      setHidden(status, true);
      const form = new SpecForm(components);
      formBox.replaceChildren(form.el);
      if (spec) form.write(spec);
      form.focus();
    })
    .catch((e) => {
      if (!alive) return;
      setText(status, from ? `Could not load job ${from}: ${e.message}` : `Could not load the job schema: ${e.message}`);
    });

  return {
    render() {},
    unmount() {
      alive = false;
    },
  };
}

async function sourceSpec(id) {
  const known = state.job?.id === id ? state.job : state.jobs.get(id);
  const job = known || (await api.getJob(id));
  const spec = { ...job.spec };
  // An array's tasks share the group that holds them to its max_concurrent; a new
  // array gets a group of its own.
  if (job.array_id && spec.array?.max_concurrent && spec.group === `${ARRAY_GROUP}${job.array_id}`) {
    delete spec.group;
  }
  return spec;
}

/** The form: one widget per JobSpec field, and the JSON editor beside them. */
class SpecForm {
  constructor(components) {
    this.components = components;
    this.schema = components.JobSpec;
    this.fields = [];
    this.submitted = false;
    const required = new Set(this.schema.required || []);
    const props = this.schema.properties;
    const names = [...PRIMARY.filter((n) => n in props), ...Object.keys(props).filter((n) => !PRIMARY.includes(n))];
    const primary = h("div.form-fields");
    const more = h("div.form-fields");
    this.more = h("details.more-options", null, h("summary", { text: "More options" }), more);
    for (const name of names) {
      const field = this.makeField(name, props[name], `$.${name}`, required.has(name));
      (PRIMARY.includes(name) ? primary : more).append(field.el);
    }

    this.json = h("textarea.json-input.mono", { rows: 24, spellcheck: "false", "aria-label": "The job spec as JSON", "data-testid": "spec-json" });
    this.jsonErrors = h("ul.field-errors", { "data-testid": "json-errors" });
    this.jsonBox = h("div.json-editor", { hidden: true }, this.json, this.jsonErrors);
    this.jsonToggle = h("input", { type: "checkbox", "data-testid": "json-toggle" });
    this.jsonToggle.addEventListener("change", () => this.setJsonMode(this.jsonToggle.checked));
    this.formErrors = h("ul.field-errors.form-errors", { "data-testid": "form-errors" });
    this.submitBtn = h("button.btn.btn-primary", { type: "submit", "data-testid": "submit-job" }, "Submit job");
    this.fieldsBox = h("div.spec-fields", null, primary, this.more);
    this.el = h(
      "form.panel.submit-form",
      { novalidate: true, "data-testid": "submit-form" },
      h("div.form-tools", null, h("label.toggle", null, this.jsonToggle, "Advanced: edit as JSON")),
      this.fieldsBox,
      this.jsonBox,
      this.formErrors,
      h("div.form-actions", null, this.submitBtn),
    );
    this.el.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    // Once a submit was tried, errors follow what is typed.
    const recheck = () => {
      if (this.submitted && !this.jsonMode) this.check({ scroll: false });
    };
    this.el.addEventListener("input", recheck);
    this.el.addEventListener("change", recheck);
  }

  focus() {
    const image = this.el.querySelector('[name="$.image"]');
    if (image) image.focus();
  }

  // --- widgets ------------------------------------------------------------------------

  makeField(name, schema, path, required) {
    const d = describe(this.components, schema);
    const label = LABELS[name] || name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());
    const error = h("div.field-error", { hidden: true, role: "alert" });
    const hints = [];
    const bounds = boundsText(d.one || d.schema);
    if (bounds) hints.push(bounds);
    if (HOW[d.kind]) hints.push(HOW[d.kind]);
    if (d.default !== undefined && d.default !== null && d.kind !== "group" && !isEmpty(d.default)) {
      hints.push(`default ${typeof d.default === "object" ? JSON.stringify(d.default) : d.default}`);
    }
    const hint = h("div.field-hint", { text: hints.join(" · ") });
    const desc = d.description ? h("div.field-desc", { text: d.description }) : null;
    const labelEl = h("label.field-label", null, label, required ? h("span.required", { text: "*", title: "required" }) : null);
    const field = { path, name, d, error, el: null, read: null, write: null };

    if (d.kind === "group") {
      const props = d.one.properties;
      const req = new Set(d.one.required || []);
      const subs = Object.keys(props).map((n) => this.makeField(n, props[n], `${path}.${n}`, req.has(n)));
      field.el = h(
        "fieldset.field.field-group",
        { "data-field": path },
        h("legend", null, label, d.nullable ? h("span.muted", { text: " (optional)" }) : null),
        desc,
        h("div.form-fields.sub-fields", null, ...subs.map((s) => s.el)),
        error,
      );
      field.read = () => {
        const out = {};
        for (const s of subs) {
          let v;
          try {
            v = s.read();
          } catch (e) {
            if (e instanceof FieldError && !e.path) e.path = s.path;
            throw e;
          }
          if (v !== undefined) out[s.name] = v;
        }
        return Object.keys(out).length ? out : undefined;
      };
      field.write = (v) => {
        for (const s of subs) s.write(v ? v[s.name] : undefined);
      };
      this.fields.push(field);
      return field;
    }

    const input = this.makeInput(d, path, label);
    field.read = input.read;
    field.write = input.write;
    labelEl.htmlFor = input.id;
    field.el = h("div.field", { "data-field": path, class: `field-${d.kind}` }, labelEl, input.el, hint, desc, error);
    this.fields.push(field);
    return field;
  }

  /** {el, id, read() -> value | undefined (left out), write(value)}; read throws FieldError. */
  makeInput(d, path, label) {
    const id = `f-${path.replace(/[^\w]+/g, "-")}`;
    const s = d.one || d.schema;
    switch (d.kind) {
      case "bool": {
        const el = h("input", { type: "checkbox", id, name: path });
        return {
          el: h("label.toggle", null, el, label),
          id,
          read: () => (el.checked === Boolean(d.default) ? undefined : el.checked),
          write: (v) => {
            el.checked = v === undefined || v === null ? Boolean(d.default) : Boolean(v);
          },
        };
      }
      case "enum": {
        const el = h(
          "select.select",
          { id, name: path },
          h("option", { value: "", text: d.default !== undefined && d.default !== null ? `(default: ${d.default})` : "(unset)" }),
          ...d.values.map((v) => h("option", { value: v, text: v })),
        );
        return { el, id, read: () => el.value || undefined, write: (v) => (el.value = v ?? "") };
      }
      case "number": {
        const attrs = { type: "number", id, name: path, step: s.type === "integer" ? "1" : "any", inputmode: "decimal" };
        // The bounds are shown, not enforced by the browser: the form's own check says
        // what is wrong in the schema's words.
        if (d.default !== undefined && d.default !== null) attrs.placeholder = String(d.default);
        const el = h("input.input", attrs);
        return {
          el,
          id,
          read: () => {
            if (el.value.trim() === "") {
              if (el.validity.badInput) throw new FieldError("must be a number");
              return undefined;
            }
            const n = Number(el.value);
            if (!Number.isFinite(n)) throw new FieldError("must be a number");
            return n;
          },
          write: (v) => (el.value = v === undefined || v === null ? "" : String(v)),
        };
      }
      case "text": {
        const attrs = { type: "text", id, name: path, spellcheck: "false" };
        if (s.maxLength !== undefined) attrs.maxlength = String(s.maxLength + 1);
        const el = h("input.input", attrs);
        return { el, id, read: () => (el.value === "" ? undefined : el.value), write: (v) => (el.value = v ?? "") };
      }
      case "argv": {
        const el = h("textarea.input.mono", { id, name: path, rows: 3, spellcheck: "false" });
        const mode = h(
          "select.select.select-sm",
          { "aria-label": `How ${label} is read` },
          h("option", { value: "list", text: "one argument per line" }),
          h("option", { value: "shell", text: "a shell command (sh -c)" }),
        );
        return {
          el: h("div.argv", null, el, mode),
          id,
          read: () => {
            if (el.value.trim() === "") return undefined;
            if (mode.value === "shell") return el.value;
            return el.value.split("\n").filter((line) => line !== "");
          },
          write: (v) => {
            mode.value = typeof v === "string" ? "shell" : "list";
            el.value = v === undefined || v === null ? "" : Array.isArray(v) ? v.join("\n") : v;
          },
        };
      }
      case "list": {
        const numeric = d.item.type === "integer" || d.item.type === "number";
        const el = numeric
          ? h("input.input", { type: "text", id, name: path, placeholder: "1, 2, 3" })
          : h("textarea.input.mono", { id, name: path, rows: 3 });
        return {
          el,
          id,
          read: () => {
            const text = el.value.trim();
            if (!text) return undefined;
            if (!numeric) return el.value.split("\n").filter((x) => x !== "");
            return text.split(/[\s,]+/).map((x) => {
              const n = Number(x);
              if (x === "" || !Number.isFinite(n)) throw new FieldError(`${JSON.stringify(x)} is not a number`);
              return n;
            });
          },
          write: (v) => (el.value = !v ? "" : v.join(numeric ? ", " : "\n")),
        };
      }
      case "map": {
        const el = h("textarea.input.mono", { id, name: path, rows: 3, spellcheck: "false", placeholder: "KEY=value" });
        return {
          el,
          id,
          read: () => {
            const out = {};
            for (const [i, line] of el.value.split("\n").entries()) {
              if (!line.trim()) continue;
              const eq = line.indexOf("=");
              if (eq <= 0) throw new FieldError(`line ${i + 1} is not KEY=VALUE`);
              const key = line.slice(0, eq).trim();
              const raw = line.slice(eq + 1);
              out[key] = secretRef(raw) || raw;
            }
            return Object.keys(out).length ? out : undefined;
          },
          write: (v) => {
            el.value = Object.entries(v || {})
              .map(([k, x]) => `${k}=${typeof x === "object" && x !== null ? JSON.stringify(x) : x}`)
              .join("\n");
          },
        };
      }
      case "refs": {
        const whens = d.long.properties.when?.enum || [];
        const el = h("textarea.input.mono", { id, name: path, rows: 3, spellcheck: "false", placeholder: whens.length ? `JOB_ID [${whens.join("|")}]` : "JOB_ID" });
        return {
          el,
          id,
          read: () => {
            const out = [];
            for (const line of el.value.split("\n")) {
              const [job, when, ...rest] = line.trim().split(/\s+/);
              if (!job) continue;
              if (rest.length) throw new FieldError(`${JSON.stringify(line.trim())} is not JOB_ID [WHEN]`);
              out.push(when ? { job, when } : job);
            }
            return out.length ? out : undefined;
          },
          write: (v) => {
            el.value = (v || []).map((x) => (typeof x === "string" ? x : x.when && x.when !== "completed" ? `${x.job} ${x.when}` : x.job)).join("\n");
          },
        };
      }
      default: {
        const el = h("textarea.input.mono", { id, name: path, rows: 3, spellcheck: "false" });
        return {
          el,
          id,
          read: () => {
            if (!el.value.trim()) return undefined;
            try {
              return JSON.parse(el.value);
            } catch (e) {
              throw new FieldError(`is not JSON: ${e.message}`);
            }
          },
          write: (v) => (el.value = v === undefined || v === null || isEmpty(v) ? "" : JSON.stringify(v, null, 2)),
        };
      }
    }
  }

  // --- reading, writing and checking ----------------------------------------------------

  /** The spec the form holds, and the errors reading it (values that are not numbers, ...). */
  collect() {
    const spec = {};
    const errors = [];
    for (const f of this.fields) {
      if (f.path.split(".").length !== 2) continue; // nested fields are read by their group
      try {
        const v = f.read();
        if (v !== undefined) spec[f.name] = v;
      } catch (e) {
        if (!(e instanceof FieldError)) throw e;
        errors.push({ path: e.path || f.path, message: e.message });
      }
    }
    return { spec, errors };
  }

  write(spec) {
    for (const f of this.fields) if (f.path.split(".").length === 2) f.write(spec[f.name]);
    const moreSet = this.fields.some((f) => !PRIMARY.includes(f.path.split(".")[1]) && f.path.split(".").length === 2 && f.read() !== undefined);
    if (moreSet) this.more.open = true;
  }

  check({ scroll = true } = {}) {
    let spec;
    let errors;
    try {
      ({ spec, errors } = this.collect());
    } catch (e) {
      errors = [{ path: "$", message: e.message }];
    }
    if (!errors.length) errors = validate(this.components, this.schema, spec);
    this.showErrors(errors, { scroll });
    return errors.length ? null : spec;
  }

  /** The field a JSON path is about: the deepest one whose path starts it. */
  fieldFor(path) {
    let best = null;
    for (const f of this.fields) {
      const p = f.path;
      if ((path === p || path.startsWith(`${p}.`) || path.startsWith(`${p}[`)) && (!best || p.length > best.path.length)) best = f;
    }
    return best;
  }

  showErrors(errors, { scroll = true } = {}) {
    const byField = new Map();
    const loose = [];
    for (const e of errors) {
      const f = this.jsonMode ? null : this.fieldFor(e.path);
      const text = e.path === f?.path ? e.message : `${e.path.replace(/^\$\.?/, "") || "the spec"}: ${e.message}`;
      if (f) byField.set(f, [...(byField.get(f) || []), text]);
      else loose.push(e.path && e.path !== "$" ? `${e.path}: ${e.message}` : e.message);
    }
    for (const f of this.fields) {
      const msgs = byField.get(f);
      setHidden(f.error, !msgs);
      setText(f.error, msgs ? msgs.join("; ") : "");
      f.el.classList.toggle("has-error", Boolean(msgs));
      if (msgs && f.el.closest(".more-options")) this.more.open = true;
    }
    const target = this.jsonMode ? this.jsonErrors : this.formErrors;
    fill(this.jsonErrors);
    fill(this.formErrors);
    fill(target, ...loose.map((m) => h("li", { text: m })));
    const first = [...byField.keys()][0];
    if (first && scroll) first.el.scrollIntoView({ block: "center" });
  }

  setJsonMode(on) {
    if (on) {
      const spec = this.check();
      if (!spec) {
        // The form's values must read before they can be shown as JSON.
        const { spec: partial, errors } = this.collect();
        if (errors.length) {
          this.jsonToggle.checked = false;
          return;
        }
        this.json.value = JSON.stringify(partial, null, 2);
      } else {
        this.json.value = JSON.stringify(spec, null, 2);
      }
      this.showErrors([]);
    } else {
      let spec;
      try {
        spec = JSON.parse(this.json.value);
      } catch (e) {
        this.jsonToggle.checked = true;
        fill(this.jsonErrors, h("li", { text: `not JSON: ${e.message}` }));
        return;
      }
      this.write(spec || {});
      fill(this.jsonErrors);
    }
    this.jsonMode = on;
    setHidden(this.fieldsBox, on);
    setHidden(this.jsonBox, !on);
  }

  async submit() {
    this.submitted = true;
    let spec;
    if (this.jsonMode) {
      try {
        spec = JSON.parse(this.json.value);
      } catch (e) {
        this.showErrors([{ path: "$", message: `not JSON: ${e.message}` }]);
        return;
      }
      const errors = validate(this.components, this.schema, spec);
      this.showErrors(errors);
      if (errors.length) return;
    } else {
      spec = this.check();
      if (!spec) return;
    }
    this.submitBtn.disabled = true;
    try {
      const job = await api.submitJob(spec);
      toast(`Job ${job.name || job.id} submitted`, "success");
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (e) {
      const path = e.details?.field;
      if (e.status === 400 && path) {
        this.showErrors([{ path, message: e.message.replace(/^\$[^\s:]*:\s*/, "") }]);
      } else {
        this.showErrors([{ path: "$", message: `The scheduler refused it: ${e.message}` }]);
      }
    } finally {
      this.submitBtn.disabled = false;
    }
  }
}

class FieldError extends Error {
  /** the JSON path of the field that could not be read, set by the group holding it */
  path = null;
}

function isEmpty(v) {
  return v === "" || (Array.isArray(v) && !v.length) || (v && typeof v === "object" && !Object.keys(v).length);
}

// An environment value written as {"secret": "NAME"} takes the stored secret's value.
function secretRef(raw) {
  if (!raw.trim().startsWith("{")) return null;
  try {
    const v = JSON.parse(raw);
    return v && typeof v === "object" && typeof v.secret === "string" && Object.keys(v).length === 1 ? v : null;
  } catch {
    return null;
  }
}
