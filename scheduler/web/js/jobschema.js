// The JobSpec as the scheduler's OpenAPI document describes it: the submit form is
// drawn from it and checks what it sends against it, so a field the scheduler adds or
// a bound it changes reaches the form without a change here. The checks are a subset
// of JSON Schema, the one the document uses (type, enum, anyOf, $ref, bounds, lengths,
// patterns, required, additionalProperties, propertyNames); the scheduler checks again.

import { get } from "./api.js";

let cached = null;

/** The OpenAPI document's components ({name: schema}), fetched once per page. */
export async function loadComponents() {
  if (!cached) {
    cached = get("/api/v1/openapi.json").then((doc) => doc.components.schemas);
    cached.catch(() => {
      cached = null;
    });
  }
  return cached;
}

/** A schema with its $ref followed (one level at a time, as the document nests them). */
export function deref(components, schema) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 8; i++) s = components[s.$ref.split("/").pop()] || {};
  return s;
}

/** The branches of a schema that are not null, and whether null is allowed. */
export function branches(components, schema) {
  const s = deref(components, schema);
  if (!s.anyOf) return { options: [s], nullable: false };
  const options = [];
  let nullable = false;
  for (const b of s.anyOf) {
    const d = deref(components, b);
    if (d.type === "null") nullable = true;
    else options.push(d);
  }
  return { options, nullable };
}

/** What a field holds, for the form: a plain summary of its schema. */
export function describe(components, schema) {
  const { options, nullable } = branches(components, schema);
  const s = deref(components, schema);
  // A property's own description (its field's) comes before its type's.
  const base = { schema: s, nullable, default: s.default, description: schema?.description || s.description || null };
  const [first] = options;
  if (!first) return { ...base, kind: "json" };
  const types = options.map((o) => (o.enum ? "enum" : o.type));
  if (types.includes("array") && types.includes("string") && options.length === 2) {
    return { ...base, kind: "argv", item: options.find((o) => o.type === "array").items, text: options.find((o) => o.type === "string") };
  }
  if (options.length > 1) return { ...base, kind: "json" };
  if (first.enum) return { ...base, kind: "enum", values: first.enum, one: first };
  if (first.type === "boolean") return { ...base, kind: "bool", one: first };
  if (first.type === "integer" || first.type === "number") return { ...base, kind: "number", one: first };
  if (first.type === "string") return { ...base, kind: "text", one: first };
  if (first.type === "object" && first.properties) {
    return { ...base, kind: "group", one: first, description: base.description || first.description || null };
  }
  if (first.type === "object" && first.additionalProperties) return { ...base, kind: "map", one: first };
  if (first.type === "array") {
    const item = branches(components, first.items);
    const scalar = item.options.every((o) => ["string", "integer", "number"].includes(o.type));
    const withRef = item.options.find((o) => o.type === "object" && o.properties);
    if (scalar) return { ...base, kind: "list", one: first, item: item.options[0] };
    if (withRef && item.options.some((o) => o.type === "string")) {
      // A list of ids, each optionally in a long form (depends_on): "ID" or "ID WHEN".
      return { ...base, kind: "refs", one: first, long: withRef };
    }
  }
  return { ...base, kind: "json" };
}

/** "integer, 0 to 100", "number, more than 0, at most 1024", "at most 200 characters" */
export function boundsText(s) {
  if (!s) return "";
  const parts = [];
  if (s.type === "integer" || s.type === "number") {
    const lo = s.minimum !== undefined ? s.minimum : s.exclusiveMinimum;
    const hi = s.maximum !== undefined ? s.maximum : s.exclusiveMaximum;
    if (s.minimum !== undefined && s.maximum !== undefined) parts.push(`${s.type}, ${lo} to ${hi}`);
    else {
      parts.push(s.type);
      if (s.minimum !== undefined) parts.push(`at least ${lo}`);
      if (s.exclusiveMinimum !== undefined) parts.push(`more than ${lo}`);
      if (s.maximum !== undefined) parts.push(`at most ${hi}`);
      if (s.exclusiveMaximum !== undefined) parts.push(`less than ${hi}`);
    }
  }
  if (s.type === "string" && s.maxLength !== undefined) parts.push(`at most ${s.maxLength.toLocaleString("en-US")} characters`);
  if (s.maxItems !== undefined) parts.push(`at most ${s.maxItems.toLocaleString("en-US")} items`);
  if (s.maxProperties !== undefined) parts.push(`at most ${s.maxProperties.toLocaleString("en-US")} entries`);
  return parts.join(", ");
}

/**
 * Check ``value`` against ``schema``; returns [{path, message}] with JSON paths as the
 * scheduler names them ($.resources.cpu, $.depends_on[0]).
 */
export function validate(components, schema, value, path = "$") {
  const errors = [];
  check(components, schema, value, path, errors);
  return errors;
}

function check(components, schema, value, path, errors) {
  const s = deref(components, schema);
  if (s.anyOf) {
    let best = null;
    for (const b of s.anyOf) {
      const errs = [];
      check(components, b, value, path, errs);
      if (!errs.length) return;
      // The branch of the value's own type tells the most.
      if (!best || (typeMatches(deref(components, b), value) && !typeMatches(deref(components, best.branch), value))) {
        best = { branch: b, errs };
      }
    }
    const fitting = s.anyOf.map((b) => deref(components, b)).filter((b) => typeMatches(b, value));
    if (fitting.length) errors.push(...best.errs);
    else errors.push({ path, message: `must be ${s.anyOf.map((b) => typeName(deref(components, b))).join(" or ")}` });
    return;
  }
  if (s.enum) {
    if (!s.enum.includes(value)) errors.push({ path, message: `must be one of ${s.enum.join(", ")}` });
    return;
  }
  if (s.type && !typeMatches(s, value)) {
    errors.push({ path, message: `must be ${typeName(s)}` });
    return;
  }
  switch (s.type) {
    case "integer":
    case "number":
      if (s.minimum !== undefined && value < s.minimum) errors.push({ path, message: `must be at least ${s.minimum}` });
      if (s.exclusiveMinimum !== undefined && value <= s.exclusiveMinimum) errors.push({ path, message: `must be more than ${s.exclusiveMinimum}` });
      if (s.maximum !== undefined && value > s.maximum) errors.push({ path, message: `must be at most ${s.maximum}` });
      if (s.exclusiveMaximum !== undefined && value >= s.exclusiveMaximum) errors.push({ path, message: `must be less than ${s.exclusiveMaximum}` });
      break;
    case "string":
      checkString(s, value, path, errors);
      break;
    case "array":
      if (s.maxItems !== undefined && value.length > s.maxItems) errors.push({ path, message: `may have at most ${s.maxItems} items` });
      if (s.minItems !== undefined && value.length < s.minItems) errors.push({ path, message: `needs at least ${s.minItems} items` });
      value.forEach((v, i) => check(components, s.items, v, `${path}[${i}]`, errors));
      break;
    case "object": {
      const props = s.properties || {};
      for (const name of s.required || []) {
        if (value[name] === undefined) errors.push({ path: `${path}.${name}`, message: "is required" });
      }
      const keys = Object.keys(value);
      if (s.maxProperties !== undefined && keys.length > s.maxProperties) errors.push({ path, message: `may have at most ${s.maxProperties} entries` });
      for (const key of keys) {
        const at = `${path}.${key}`;
        if (key in props) check(components, props[key], value[key], at, errors);
        else if (s.additionalProperties === false) errors.push({ path: at, message: `is not a field of ${s.title || "this object"}` });
        else if (s.additionalProperties && typeof s.additionalProperties === "object") {
          if (s.propertyNames) {
            const keyErrs = [];
            checkString(s.propertyNames, key, at, keyErrs);
            for (const e of keyErrs) errors.push({ path: at, message: `the name ${JSON.stringify(key)} ${e.message}` });
          }
          check(components, s.additionalProperties, value[key], at, errors);
        }
      }
      break;
    }
    default:
      break;
  }
}

function checkString(s, value, path, errors) {
  // Lengths in code points, as the scheduler counts them.
  const n = [...value].length;
  if (s.minLength !== undefined && n < s.minLength) {
    errors.push({ path, message: s.minLength === 1 ? "may not be empty" : `needs at least ${s.minLength} characters` });
  }
  if (s.maxLength !== undefined && n > s.maxLength) errors.push({ path, message: `may have at most ${s.maxLength} characters` });
  if (s.pattern !== undefined && !new RegExp(s.pattern).test(value)) errors.push({ path, message: `must match ${s.pattern}` });
}

function typeMatches(s, value) {
  if (s.enum) return s.enum.includes(value);
  switch (s.type) {
    case "null":
      return value === null;
    case "boolean":
      return typeof value === "boolean";
    case "integer":
      return Number.isInteger(value);
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "string":
      return typeof value === "string";
    case "array":
      return Array.isArray(value);
    case "object":
      return value !== null && typeof value === "object" && !Array.isArray(value);
    default:
      return true;
  }
}

function typeName(s) {
  if (s.enum) return `one of ${s.enum.join(", ")}`;
  if (s.title) return `a ${s.title} object`;
  return { null: "null", boolean: "true or false", integer: "a whole number", number: "a number", string: "text", array: "a list", object: "an object" }[s.type] || "valid";
}
