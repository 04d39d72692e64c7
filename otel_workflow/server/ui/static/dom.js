// DOM helpers: every node of the UI is built here, from text, never from HTML.
//
// h(tag, props, ...children): props are attributes (`class`, `id`, `type`...), `dataset` (an
// object of data-* values), `style` (an object of CSSOM properties) and `on` (an object of
// event listeners; `onclick: fn` works too). Children that are strings or numbers become text
// nodes; null, undefined and false are skipped; arrays are flattened.

const SVG_NS = "http://www.w3.org/2000/svg";

// URLs we put in href/src are always built by us: a same-origin path ("/...", not "//..."),
// a query ("?...") or a fragment ("#...").
function safeUrl(value) {
  const text = String(value);
  if ((text.startsWith("/") && !text.startsWith("//") && !text.startsWith("/\\")) ||
      text.startsWith("?") || text.startsWith("#")) {
    return text;
  }
  throw new Error(`refusing the URL ${JSON.stringify(text)}`);
}

function setProps(node, props) {
  if (!props) return;
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") {
      for (const [name, v] of Object.entries(value)) {
        if (v !== undefined && v !== null) node.dataset[name] = String(v);
      }
    } else if (key === "style") {
      for (const [name, v] of Object.entries(value)) node.style[name] = v;
    } else if (key === "on") {
      for (const [event, listener] of Object.entries(value)) node.addEventListener(event, listener);
    } else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key.startsWith("on")) {
      throw new Error(`refusing the attribute ${key}`);
    } else if (key === "href" || key === "src" || key === "action" || key === "xlink:href") {
      node.setAttribute(key, safeUrl(value));
    } else if (key === "text") {
      node.textContent = String(value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
}

export function append(node, ...children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) {
      append(node, ...child);
    } else if (child instanceof Node) {
      node.appendChild(child);
    } else {
      node.appendChild(document.createTextNode(String(child)));
    }
  }
  return node;
}

export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  return append(node, ...children);
}

export function s(tag, props, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, props);
  return append(node, ...children);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function replace(node, ...children) {
  const fragment = document.createDocumentFragment();
  append(fragment, ...children);
  node.replaceChildren(fragment);
  return node;
}

// -- formatting -------------------------------------------------------------------------------------

// ISO timestamps with microseconds ("2024-05-01T10:00:00.123456+00:00") to epoch milliseconds.
export function parseTime(text) {
  if (text === null || text === undefined || text === "") return null;
  const trimmed = String(text).replace(/(\.\d{3})\d+/, "$1");
  const value = Date.parse(trimmed);
  return Number.isNaN(value) ? null : value;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

// Local time, to the millisecond: "2024-05-01 12:00:00.123".
export function formatTime(text) {
  const ms = parseTime(text);
  if (ms === null) return text ? String(text) : "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function formatShortTime(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function timeNode(text) {
  return h("time", { datetime: text || undefined, title: text || undefined }, formatTime(text));
}

export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${pad(m % 60)}m`;
  return `${Math.floor(hours / 24)}d ${pad(hours % 24)}h`;
}

export function formatPercent(rate) {
  if (rate === null || rate === undefined) return "—";
  const p = rate * 100;
  return `${p === 0 || p >= 10 ? p.toFixed(0) : p.toFixed(1)}%`;
}

// Any JSON value as one line of text (strings as they are).
export function valueText(value) {
  if (typeof value === "string") return value;
  if (value === undefined) return "";
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

// -- statuses: an icon and a word, never colour alone -------------------------------------------------

const STATUSES = {
  completed: { icon: "✓", label: "completed" },
  ok: { icon: "✓", label: "ok" },
  failed: { icon: "✗", label: "failed" },
  error: { icon: "✗", label: "error" },
  skipped: { icon: "⏭", label: "skipped" },
  compensated: { icon: "↺", label: "compensated" },
  running: { icon: "●", label: "running" },
};

export function statusBadge(status) {
  const known = STATUSES[status] || { icon: "•", label: status ? String(status) : "unknown" };
  const cls = STATUSES[status] ? status : "unknown";
  return h("span", { class: `status status-${cls}` },
    h("span", { class: "status-icon", "aria-hidden": "true" }, known.icon), " ", known.label);
}

// -- errors -------------------------------------------------------------------------------------------

export function errorBox(error, prefix) {
  const message = error && error.message ? error.message : String(error);
  return h("div", { class: "error", role: "alert" }, prefix ? `${prefix}: ${message}` : message);
}

// True while the user types in a field (the page's single-key shortcuts then stay out of the way).
export function isTyping(target) {
  if (!target || !(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  if (tag === "INPUT") {
    const type = (target.getAttribute("type") || "text").toLowerCase();
    return !["checkbox", "radio", "button", "submit", "reset"].includes(type);
  }
  return false;
}

export function pathOf(...parts) {
  return "/" + parts.map((part) => encodeURIComponent(String(part))).join("/");
}
