// The side panel of one span: /api/traces/{trace_id}/spans/{span_id} in full.

import { getJSON, isSilent } from "./api.js";
import { errorBox, formatDuration, h, parseTime, pathOf, replace, statusBadge, timeNode, valueText } from "./dom.js";
import { jsonView } from "./jsonview.js";

function sortedEntries(object) {
  return Object.entries(object || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

export function keyValueTable(object, { caption, skip } = {}) {
  const entries = sortedEntries(object).filter(([key]) => !(skip && skip.includes(key)));
  if (!entries.length) return h("p", { class: "muted" }, "none");
  return h("table", { class: "kv" },
    caption ? h("caption", { class: "visually-hidden" }, caption) : null,
    h("tbody", null, entries.map(([key, value]) =>
      h("tr", null, h("th", { scope: "row" }, key), h("td", null, valueText(value))))));
}

function field(label, ...value) {
  return [h("dt", null, label), h("dd", null, ...value)];
}

function section(title, ...content) {
  return h("section", { class: "panel-section" }, h("h3", null, title), ...content);
}

function eventView(event, spanStart) {
  const attributes = event.attributes || {};
  const at = parseTime(event.timestamp);
  const offset = at !== null && spanStart !== null ? `+${formatDuration(at - spanStart)}` : "";
  const stack = event.name === "exception" && attributes["exception.stacktrace"] !== undefined
    ? h("pre", { class: "stack" }, valueText(attributes["exception.stacktrace"])) : null;
  return h("li", { class: event.name === "exception" ? "event exception" : "event" },
    h("div", { class: "event-head" },
      h("span", { class: "event-name" }, event.name ?? "(no name)"),
      " ",
      h("span", { class: "muted", title: event.timestamp || undefined }, offset || event.timestamp || "")),
    keyValueTable(attributes, { skip: stack ? ["exception.stacktrace"] : undefined }),
    stack);
}

function linkView(link) {
  return h("li", null,
    h("div", null, "trace ", h("a", { class: "mono", href: pathOf("traces", link.trace_id) }, link.trace_id),
      " span ", h("span", { class: "mono" }, link.span_id)),
    keyValueTable(link.attributes));
}

export class SpanPanel {
  // `extra(line)` may give more nodes to show for a span (the captured I/O of a step).
  constructor({ onClose, extra } = {}) {
    this.onClose = onClose || (() => {});
    this.extra = extra || (() => null);
    this.title = h("h2", { id: "span-panel-title" }, "Span");
    this.content = h("div", { class: "panel-content" });
    this.closeButton = h("button", { type: "button", class: "close", "aria-label": "Close the span panel", title: "Close (Esc)" }, "×");
    this.closeButton.addEventListener("click", () => this.close());
    this.el = h("aside", {
      class: "span-panel", "data-testid": "span-panel", hidden: true, "aria-labelledby": "span-panel-title", tabindex: "-1",
    },
      h("div", { class: "panel-head" }, this.title, this.closeButton),
      this.content);
    this.spanId = null;
    this.seq = 0;
  }

  get isOpen() {
    return !this.el.hidden;
  }

  close() {
    if (this.el.hidden) return false;
    this.el.hidden = true;
    this.spanId = null;
    this.seq++;
    document.body.classList.remove("panel-open");
    this.onClose();
    return true;
  }

  async open(traceId, line, { focus = true } = {}) {
    const seq = ++this.seq;
    this.spanId = line.span_id;
    this.status = line.status;
    this.title.textContent = line.label ?? line.name ?? "Span";
    replace(this.content, this.summary(line, null), h("p", { class: "muted loading" }, "Loading the span…"));
    this.el.hidden = false;
    document.body.classList.add("panel-open");
    if (focus) this.el.focus({ preventScroll: true });
    let span = null;
    let problem = null;
    try {
      span = await getJSON(`/api/traces/${encodeURIComponent(traceId)}/spans/${encodeURIComponent(line.span_id)}`);
    } catch (error) {
      if (isSilent(error)) return;
      problem = error;
    }
    if (seq !== this.seq) return;
    if (problem) {
      replace(this.content, this.summary(line, null), errorBox(problem, "The span could not be read"), this.extra(line));
      return;
    }
    replace(this.content, this.summary(line, span), this.details(span), this.extra(line));
  }

  summary(line, span) {
    const s = span || {};
    const start = s.start_time ?? line.start_time;
    const end = s.end_time ?? line.end_time;
    const duration = s.duration_ms ?? line.duration_ms;
    const running = s.running ?? line.end_time === null;
    const statusText = [s.status_code, s.status_message].filter((x) => x !== null && x !== undefined && x !== "").join(": ");
    return h("div", { class: "panel-summary" },
      h("div", { class: "panel-status" }, statusBadge(line.status),
        statusText ? h("span", { class: "status-code" }, ` ${statusText}`) : null),
      line.error_message ? h("p", { class: "error-text" }, line.error_message) : null,
      h("dl", { class: "fields" },
        field("Name", s.name ?? line.name ?? ""),
        field("Kind", s.kind ?? line.kind ?? "—"),
        field("Service", s.service_name ?? line.service_name ?? "—"),
        line.step_type ? field("Step type", line.step_type) : null,
        field("Start", timeNode(start)),
        field("End", end ? timeNode(end) : running ? "running" : "—"),
        field("Duration", duration !== null && duration !== undefined ? formatDuration(duration) : running ? "running" : "—"),
        field("Span id", h("span", { class: "mono" }, line.span_id)),
        field("Parent", h("span", { class: "mono" }, (s.parent_span_id ?? line.parent_span_id) || "—")),
        s.trace_id ? field("Trace", h("a", { class: "mono", href: pathOf("traces", s.trace_id) }, s.trace_id)) : null));
  }

  details(span) {
    const dropped = [
      span.dropped_attributes ? `${span.dropped_attributes} attributes` : "",
      span.dropped_events ? `${span.dropped_events} events` : "",
      span.dropped_links ? `${span.dropped_links} links` : "",
    ].filter(Boolean);
    const spanStart = parseTime(span.start_time);
    const events = span.events || [];
    const links = span.links || [];
    return [
      span.running ? h("p", { class: "notice" }, "● This span is still running: only what is known at its start shows.") : null,
      section("Attributes", keyValueTable(span.attributes, { caption: "Attributes" })),
      section(`Events (${events.length})`,
        events.length ? h("ol", { class: "events" }, events.map((event) => eventView(event, spanStart)))
          : h("p", { class: "muted" }, "none")),
      section(`Links (${links.length})`,
        links.length ? h("ul", { class: "links" }, links.map(linkView)) : h("p", { class: "muted" }, "none")),
      section("Resource", keyValueTable(span.resource_attributes, { caption: "Resource attributes" })),
      section("Scope", h("p", null, span.scope_name || "—", span.scope_version ? ` ${span.scope_version}` : "")),
      dropped.length ? h("p", { class: "notice" }, `Dropped by the SDK: ${dropped.join(", ")}.`) : null,
    ];
  }
}

export { jsonView };
