// Captured JSON as a collapsible tree of <details>, built from text nodes; text that is not JSON
// shows as it is, in a <pre>.

import { h } from "./dom.js";

const OPEN_DEPTH = 2;
const MAX_CHILDREN = 500;

function scalar(value) {
  if (value === null) return h("span", { class: "j-null" }, "null");
  switch (typeof value) {
    case "string": return h("span", { class: "j-string" }, `"${value}"`);
    case "number": return h("span", { class: "j-number" }, String(value));
    case "boolean": return h("span", { class: "j-bool" }, String(value));
    default: return h("span", null, String(value));
  }
}

function node(value, depth, key) {
  const keyNode = key === undefined ? null : h("span", { class: "j-key" }, `${key}: `);
  if (value === null || typeof value !== "object") {
    return h("div", { class: "j-line" }, keyNode, scalar(value));
  }
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
  if (!entries.length) {
    return h("div", { class: "j-line" }, keyNode, h("span", { class: "j-punct" }, isArray ? "[]" : "{}"));
  }
  const summary = isArray ? `[ ${entries.length} item${entries.length === 1 ? "" : "s"} ]`
    : `{ ${entries.length} key${entries.length === 1 ? "" : "s"} }`;
  const shown = entries.slice(0, MAX_CHILDREN);
  return h("details", { class: "j-node", open: depth < OPEN_DEPTH },
    h("summary", null, keyNode, h("span", { class: "j-punct" }, summary)),
    h("div", { class: "j-children" },
      shown.map(([k, v]) => node(v, depth + 1, k)),
      entries.length > shown.length ? h("div", { class: "j-more" }, `… ${entries.length - shown.length} more`) : null));
}

// `text`: JSON text, or null when nothing was captured.
export function jsonView(text) {
  if (text === null || text === undefined) return h("span", { class: "muted" }, "— (none)");
  let value;
  if (typeof text !== "string") {
    value = text;
  } else {
    try {
      value = JSON.parse(text);
    } catch {
      return h("pre", { class: "json-raw" }, text);
    }
  }
  let formatted = "";
  try {
    formatted = JSON.stringify(value, null, 2);
  } catch {
    formatted = String(text);
  }
  return h("div", { class: "json" },
    h("div", { class: "j-tree" }, node(value, 0)),
    h("details", { class: "j-text" }, h("summary", null, "as text"), h("pre", null, formatted)));
}
