// The waterfall of a run or a trace: one row a span, in the order the API gives (depth first),
// indented by depth, a bar to the scale of the whole run (running spans grow to now), status as
// icon and text, retried steps as attempts, the critical path marked, self time per span.

import { formatDuration, h, parseTime, replace, statusBadge } from "./dom.js";

// -- the figures ------------------------------------------------------------------------------------

// Per span: start and end in ms from the run's origin (running spans end at `now`), the children,
// the critical path, the attempts and the self time.
export function analyse(spans, now) {
  const n = spans.length;
  const index = new Map();
  for (let i = 0; i < n; i++) index.set(spans[i].span_id, i);
  let origin = null;
  for (const line of spans) {
    const started = parseTime(line.start_time);
    if (started !== null && typeof line.offset_ms === "number") {
      origin = started - line.offset_ms;
      break;
    }
  }
  const start = new Float64Array(n);
  const end = new Float64Array(n);
  const running = new Uint8Array(n);
  const children = new Array(n);
  const roots = [];
  let first = Infinity;
  let last = -Infinity;
  for (let i = 0; i < n; i++) {
    const line = spans[i];
    children[i] = [];
    start[i] = typeof line.offset_ms === "number" ? line.offset_ms : 0;
    if (typeof line.duration_ms === "number") {
      end[i] = start[i] + line.duration_ms;
    } else {
      running[i] = 1;
      end[i] = origin === null ? start[i] : Math.max(start[i], now - origin);
    }
    if (start[i] < first) first = start[i];
    if (end[i] > last) last = end[i];
  }
  for (let i = 0; i < n; i++) {
    const parent = spans[i].parent_span_id ? index.get(spans[i].parent_span_id) : undefined;
    if (parent === undefined || parent === i) roots.push(i);
    else children[parent].push(i);
  }
  if (!Number.isFinite(first)) first = 0;
  const total = Math.max(last - first, 1e-6);
  return { n, origin, start, end, running, children, roots, first, total };
}

// From the root that ends last, repeatedly the child that ends last (ties: the one starting last).
export function criticalPath(figures) {
  const marked = new Uint8Array(figures.n);
  const latest = (candidates) => {
    let best = -1;
    for (const i of candidates) {
      if (best < 0 || figures.end[i] > figures.end[best] ||
          (figures.end[i] === figures.end[best] && figures.start[i] >= figures.start[best])) best = i;
    }
    return best;
  };
  let at = latest(figures.roots);
  const seen = new Set();
  while (at >= 0 && !seen.has(at)) {
    seen.add(at);
    marked[at] = 1;
    at = latest(figures.children[at]);
  }
  return marked;
}

// A span's duration minus the union of its children's intervals (clipped to the span).
export function selfTimes(figures) {
  const self = new Float64Array(figures.n);
  for (let i = 0; i < figures.n; i++) {
    const from = figures.start[i];
    const to = figures.end[i];
    const kids = figures.children[i];
    if (!kids.length) {
      self[i] = to - from;
      continue;
    }
    const intervals = [];
    for (const k of kids) {
      const a = Math.max(from, figures.start[k]);
      const b = Math.min(to, figures.end[k]);
      if (b > a) intervals.push([a, b]);
    }
    intervals.sort((x, y) => x[0] - y[0]);
    let covered = 0;
    let curA = null;
    let curB = null;
    for (const [a, b] of intervals) {
      if (curB === null || a > curB) {
        if (curB !== null) covered += curB - curA;
        curA = a;
        curB = b;
      } else if (b > curB) {
        curB = b;
      }
    }
    if (curB !== null) covered += curB - curA;
    self[i] = Math.max(0, to - from - covered);
  }
  return self;
}

// Steps of one name under one parent are attempts 1..n (in start order); 0 for the others.
export function attempts(spans, figures) {
  const groups = new Map();
  for (let i = 0; i < spans.length; i++) {
    const line = spans[i];
    if (line.role !== "step") continue;
    const key = `${line.parent_span_id || ""}\u0000${line.label ?? line.name}`;
    let group = groups.get(key);
    if (!group) groups.set(key, (group = []));
    group.push(i);
  }
  const attempt = new Uint32Array(spans.length);
  for (const group of groups.values()) {
    if (group.length < 2) continue;
    group.sort((a, b) => figures.start[a] - figures.start[b] || a - b);
    group.forEach((i, k) => { attempt[i] = k + 1; });
  }
  return attempt;
}

// -- the component ----------------------------------------------------------------------------------

const TICKS = [0, 0.25, 0.5, 0.75, 1];

export class Waterfall {
  // onOpen(line) is called to show a span (click, or Enter on the selected row).
  constructor({ onOpen }) {
    this.onOpen = onOpen;
    this.spans = [];
    this.rows = [];
    this.bars = [];
    this.selected = -1;
    this.selectedId = null;
    this.axisLabels = TICKS.map(() => h("span", { class: "tick" }));
    this.axis = h("div", { class: "wf-axis", "aria-hidden": "true" },
      this.axisLabels.map((label, i) => {
        label.style.left = `${TICKS[i] * 100}%`;
        return label;
      }));
    this.head = h("div", { class: "wf-row wf-head", role: "row" },
      h("div", { class: "wf-name", role: "columnheader" }, "Span"),
      h("div", { class: "wf-status", role: "columnheader" }, "Status"),
      h("div", { class: "wf-num wf-dur", role: "columnheader" }, "Duration"),
      h("div", { class: "wf-num wf-self", role: "columnheader", title: "Its duration minus the time its children ran" }, "Self"),
      h("div", { class: "wf-track", role: "columnheader" }, this.axis));
    this.body = h("div", { class: "wf-body", role: "rowgroup" });
    this.el = h("div", { class: "waterfall", "data-testid": "waterfall", role: "table", "aria-label": "Waterfall of the spans" },
      this.head, this.body);
    this.body.addEventListener("click", (event) => {
      const row = event.target instanceof Element ? event.target.closest("[data-testid=span-row]") : null;
      if (!row) return;
      const i = Number(row.dataset.index);
      this.select(i, { focus: true });
      this.open();
    });
  }

  get hasRunning() {
    return this.figures ? this.figures.running.some((x) => x === 1) : false;
  }

  update(spans, now = Date.now()) {
    performance.mark("waterfall-start");
    this.spans = spans;
    const figures = analyse(spans, now);
    this.figures = figures;
    const critical = criticalPath(figures);
    const attempt = attempts(spans, figures);
    const self = selfTimes(figures);
    const fragment = document.createDocumentFragment();
    const rows = new Array(spans.length);
    const bars = new Array(spans.length);
    const durs = new Array(spans.length);
    const selfs = new Array(spans.length);
    this.selected = -1;
    for (let i = 0; i < spans.length; i++) {
      const line = spans[i];
      const status = line.status || "unknown";
      const isCritical = critical[i] === 1;
      const depth = Math.max(0, Number(line.depth) || 0);
      const name = h("div", { class: "wf-name", role: "cell", title: line.name !== line.label ? line.name : undefined },
        h("span", { class: isCritical ? "crit-mark on" : "crit-mark", title: isCritical ? "On the critical path" : undefined },
          isCritical ? "◆" : ""),
        isCritical ? h("span", { class: "visually-hidden" }, "critical path, ") : null,
        h("span", { class: "wf-label" }, line.label ?? line.name ?? "(no name)"),
        attempt[i] ? h("span", { class: "chip attempt" }, `attempt ${attempt[i]}`) : null,
        line.role !== "step" && line.role !== "execution" && line.kind && line.kind !== "INTERNAL"
          ? h("span", { class: "chip kind" }, line.kind) : null,
        line.error_message ? h("span", { class: "wf-error", title: line.error_message }, line.error_message) : null);
      name.style.paddingLeft = `${0.35 + depth * 1.1}rem`;
      const bar = h("div", { class: `bar bar-${status}${figures.running[i] ? " growing" : ""}` });
      const dur = h("div", { class: "wf-num wf-dur", role: "cell" }, formatDuration(figures.end[i] - figures.start[i]));
      const selfCell = h("div", { class: "wf-num wf-self", role: "cell" }, formatDuration(self[i]));
      const row = h("div", {
        class: `wf-row${isCritical ? " critical" : ""}`,
        role: "row",
        tabindex: "-1",
        "data-testid": "span-row",
        dataset: {
          spanId: line.span_id,
          status,
          index: i,
          critical: isCritical ? "true" : undefined,
          attempt: attempt[i] > 1 ? attempt[i] : undefined,
          depth,
        },
      },
        name,
        h("div", { class: "wf-status", role: "cell" }, statusBadge(status)),
        dur,
        selfCell,
        h("div", { class: "wf-track", role: "cell" }, bar));
      if (line.span_id === this.selectedId) {
        row.classList.add("selected");
        row.setAttribute("aria-selected", "true");
        this.selected = i;
      }
      rows[i] = row;
      bars[i] = bar;
      durs[i] = dur;
      selfs[i] = selfCell;
      fragment.appendChild(row);
    }
    this.rows = rows;
    this.bars = bars;
    this.durs = durs;
    this.selfs = selfs;
    this.place();
    if (!spans.length) {
      fragment.appendChild(h("div", { class: "wf-empty" }, "No spans (yet)."));
    }
    replace(this.body, fragment);
    performance.mark("waterfall-end");
    performance.measure(`waterfall: ${spans.length} spans`, "waterfall-start", "waterfall-end");
  }

  // Bars as percentages of the whole run; axis labels.
  place() {
    const f = this.figures;
    for (let i = 0; i < f.n; i++) {
      const style = this.bars[i].style;
      style.left = `${((f.start[i] - f.first) / f.total) * 100}%`;
      style.width = `${((f.end[i] - f.start[i]) / f.total) * 100}%`;
    }
    TICKS.forEach((tick, i) => { this.axisLabels[i].textContent = formatDuration(f.total * tick); });
  }

  // Running spans grow: the run's scale, their bars, durations and self times follow the clock.
  tick(now = Date.now()) {
    if (!this.figures || !this.hasRunning) return;
    const f = this.figures;
    if (f.origin === null) return;
    let last = -Infinity;
    for (let i = 0; i < f.n; i++) {
      if (f.running[i]) f.end[i] = Math.max(f.start[i], now - f.origin);
      if (f.end[i] > last) last = f.end[i];
    }
    f.total = Math.max(last - f.first, 1e-6);
    this.place();
    const self = selfTimes(f);
    for (let i = 0; i < f.n; i++) {
      if (f.running[i]) this.durs[i].textContent = formatDuration(f.end[i] - f.start[i]);
      this.selfs[i].textContent = formatDuration(self[i]);
    }
  }

  select(index, { focus = true } = {}) {
    if (!this.rows.length) return;
    const i = Math.max(0, Math.min(index, this.rows.length - 1));
    if (this.selected >= 0 && this.rows[this.selected]) {
      this.rows[this.selected].classList.remove("selected");
      this.rows[this.selected].removeAttribute("aria-selected");
    }
    const row = this.rows[i];
    row.classList.add("selected");
    row.setAttribute("aria-selected", "true");
    this.selected = i;
    this.selectedId = this.spans[i].span_id;
    if (focus) {
      row.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
  }

  selectSpan(spanId, options) {
    const i = this.spans.findIndex((line) => line.span_id === spanId);
    if (i >= 0) this.select(i, options);
    return i >= 0;
  }

  move(delta) {
    this.select(this.selected < 0 ? 0 : this.selected + delta);
  }

  focusSelected() {
    if (this.selected >= 0 && this.rows[this.selected]) this.rows[this.selected].focus({ preventScroll: true });
  }

  open() {
    if (this.selected < 0 || !this.spans[this.selected]) return false;
    this.onOpen(this.spans[this.selected]);
    return true;
  }
}
