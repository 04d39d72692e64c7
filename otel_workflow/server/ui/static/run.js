// "/executions/{id}" (one run: header, waterfall, span panel, logs, captured I/O, downloads) and
// "/traces/{trace_id}" (any trace: the same waterfall and panel).

import { getJSON, isSilent, withQuery } from "./api.js";
import {
  errorBox, formatDuration, h, parseTime, pathOf, replace, statusBadge, timeNode, valueText,
} from "./dom.js";
import { jsonView } from "./jsonview.js";
import { keyValueTable, SpanPanel } from "./panel.js";
import { Poller, Ticker } from "./poll.js";
import { Waterfall } from "./waterfall.js";

const LEVELS = ["debug", "info", "warning", "error", "critical"];

function idFromPath(prefix) {
  const rest = location.pathname.slice(prefix.length).replace(/\/$/, "");
  try {
    return decodeURIComponent(rest);
  } catch {
    return rest;
  }
}

function field(label, ...value) {
  return h("div", { class: "field-pair" }, h("dt", null, label), h("dd", null, ...value));
}

function legend() {
  return h("p", { class: "legend" },
    h("span", null, h("span", { class: "crit-mark on", "aria-hidden": "true" }, "◆"), " critical path"),
    ["completed", "failed", "skipped", "compensated", "running"].map((status) => h("span", null, statusBadge(status))),
    h("span", { class: "muted" }, "j / k move, Enter opens, Esc closes"));
}

// The part of a page both pages share: the waterfall and its panel, polling while something runs.
class TraceView {
  constructor({ traceId, extra }) {
    this.traceId = traceId;
    this.panel = new SpanPanel({ onClose: () => this.waterfall.focusSelected(), extra });
    this.waterfall = new Waterfall({ onOpen: (line) => this.panel.open(this.traceId, line) });
    this.el = h("div", { class: "wf-scroll" }, this.waterfall.el);
  }

  update(spans, wanted) {
    const openId = this.panel.isOpen ? this.panel.spanId : null;
    const openStatus = this.panel.status;
    this.waterfall.update(spans);
    if (wanted && this.waterfall.selectSpan(wanted, { focus: true })) {
      this.waterfall.open();
      return;
    }
    if (openId) {
      const line = spans.find((candidate) => candidate.span_id === openId);
      if (line && line.status !== openStatus) this.panel.open(this.traceId, line, { focus: false });
    }
  }

  keys(focus) {
    return {
      focus,
      move: (delta) => this.waterfall.move(delta),
      open: () => this.waterfall.open(),
      close: () => this.panel.close(),
    };
  }
}

// -- /executions/{id} -------------------------------------------------------------------------------

async function mountRun(main, setTitle) {
  const id = idFromPath("/executions/");
  setTitle(`Run ${id.slice(0, 8)}`);
  const heading = h("h1", null, "Run ", h("span", { class: "mono" }, id.slice(0, 8)));
  const headStatus = h("span", { class: "head-status" });
  const header = h("div", { class: "run-header" });
  const message = h("div", { class: "message-area" });
  const ioSection = h("section", { class: "io", "data-testid": "io", "aria-labelledby": "io-title" },
    h("h2", { id: "io-title" }, "Captured input and output"), h("p", { class: "muted" }, "Loading…"));
  let detail = null;
  let steps = new Map();
  const view = new TraceView({ traceId: null, extra: (line) => stepIo(line) });
  const logs = new LogsView(id);
  const durationNode = h("span", null, "—");

  replace(main,
    h("div", { class: "page-head" }, heading, headStatus),
    message,
    header,
    h("section", { class: "waterfall-section", "aria-labelledby": "wf-title" },
      h("h2", { id: "wf-title" }, "Waterfall"), legend(), view.el),
    logs.el,
    ioSection,
    view.panel.el);

  function stepIo(line) {
    const step = steps.get(line.span_id);
    if (!step || (step.input_data === null && step.output_data === null)) return null;
    return h("section", { class: "panel-section" }, h("h3", null, "Captured I/O"),
      h("h4", null, "Input"), jsonView(step.input_data), h("h4", null, "Output"), jsonView(step.output_data));
  }

  function renderHeader() {
    const d = detail;
    heading.replaceChildren("Run ", h("span", { class: "wrap" }, d.workflow_id || "(no workflow)"));
    setTitle(`Run ${d.workflow_id || ""} ${String(d.id).slice(0, 8)}`.replace(/\s+/g, " "));
    replace(headStatus, statusBadge(d.status));
    const exportPath = (format) => withQuery(`/api/executions/${encodeURIComponent(d.id)}/export`, { format });
    replace(header,
      h("dl", { class: "fields grid" },
        field("Status", statusBadge(d.status)),
        field("Workflow", d.workflow_id || "—"),
        field("Trigger", d.trigger_type || "—"),
        field("Triggered by", d.triggered_by || "—"),
        field("Started", timeNode(d.started_at)),
        field("Completed", d.completed_at ? timeNode(d.completed_at) : d.status === "running" ? "running" : "—"),
        field("Duration", durationNode),
        field("Config version", d.config_version || "—"),
        field("Trace", h("a", { class: "mono", href: pathOf("traces", d.trace_id) }, d.trace_id)),
        field("Service", d.service_name || "—"),
        field("Execution id", h("span", { class: "mono" }, d.id)),
        d.status === "running" && d.current_step ? field("Current step", d.current_step) : null,
        d.error_message ? field("Error", h("span", { class: "error-text" }, d.error_message)) : null),
      h("div", { class: "downloads" },
        h("span", null, "Download the run: "),
        h("a", { class: "button", href: exportPath("jaeger-json"), download: true, "data-testid": "download-jaeger" },
          "⬇ Jaeger JSON"),
        " ",
        h("a", { class: "button", href: exportPath("otlp-json"), download: true, "data-testid": "download-otlp" },
          "⬇ OTLP JSON")));
    tickDuration();
  }

  function tickDuration() {
    if (!detail) return;
    if (detail.status === "running" && detail.duration_ms === null) {
      const started = parseTime(detail.started_at);
      durationNode.textContent = started === null ? "—" : `${formatDuration(Date.now() - started)} (running)`;
    } else {
      durationNode.textContent = formatDuration(detail.duration_ms);
    }
  }

  function renderIo() {
    const d = detail;
    const captured = (d.steps || []).filter((step) => step.input_data !== null || step.output_data !== null);
    const parts = [h("h2", { id: "io-title" }, "Captured input and output")];
    if (!d.capture_io && d.trigger_data === null && !captured.length) {
      parts.push(h("p", { class: "muted" },
        "Nothing captured: I/O capture was off for this run (turn it on with capture_io())."));
    } else {
      parts.push(h("div", { class: "io-block" }, h("h3", null, "Trigger data"), jsonView(d.trigger_data)));
      if (!captured.length) parts.push(h("p", { class: "muted" }, "No step recorded input or output."));
      for (const step of captured) {
        parts.push(h("article", { class: "io-block", dataset: { stepId: step.id } },
          h("h3", null, `${step.sequence_num ?? ""}. `, step.step_name, " ", statusBadge(step.status)),
          h("div", { class: "io-pair" },
            h("div", null, h("h4", null, "Input"), jsonView(step.input_data)),
            h("div", null, h("h4", null, "Output"), jsonView(step.output_data)))));
      }
    }
    replace(ioSection, ...parts);
  }

  let firstLoad = true;
  async function load() {
    let answer;
    try {
      answer = await getJSON(`/api/executions/${encodeURIComponent(id)}`);
    } catch (error) {
      if (isSilent(error)) return;
      if (firstLoad) setTitle("Run not found");
      replace(message, errorBox(error, firstLoad ? "The run could not be read" : "Refreshing the run failed"));
      if (firstLoad) {
        replace(ioSection);
        ioSection.hidden = true;
        logs.el.hidden = true;
      }
      throw error;
    }
    replace(message);
    const statusChanged = !detail || detail.status !== answer.status;
    detail = answer;
    steps = new Map((answer.steps || []).map((step) => [step.id, step]));
    view.traceId = answer.trace_id;
    renderHeader();
    const wanted = firstLoad ? new URLSearchParams(location.search).get("span") : null;
    view.update(answer.spans || [], wanted);
    if (firstLoad || statusChanged || answer.status === "running") renderIo();
    logs.setSteps(answer.steps || []);
    if (!firstLoad) await logs.load().catch(() => {});
    firstLoad = false;
  }

  const running = () => detail && (detail.status === "running" || view.waterfall.hasRunning);
  const poller = new Poller(async () => {
    await load();
    if (!running()) {
      poller.stop();
      ticker.stop();
    }
  }, 2000);
  const ticker = new Ticker(() => {
    tickDuration();
    view.waterfall.tick();
  });

  try {
    await load();
  } catch {
    return { keys: view.keys(() => {}) };
  }
  logs.load().catch(() => {});
  if (running()) {
    poller.start({ immediately: false });
    ticker.start();
  }
  return { keys: view.keys(() => logs.focus()) };
}

// The logs of a run, filtered by step and level.
class LogsView {
  constructor(executionId) {
    this.executionId = executionId;
    this.steps = [];
    this.stepNames = new Map();
    this.stepSelect = h("select", { name: "step", id: "logs-step" }, h("option", { value: "" }, "All steps"));
    this.levelSelect = h("select", { name: "level", id: "logs-level" },
      h("option", { value: "" }, "All levels"), LEVELS.map((level) => h("option", { value: level }, level)));
    this.count = h("span", { class: "muted" });
    this.list = h("tbody");
    this.message = h("div", { class: "message-area" });
    this.el = h("section", { class: "logs", "data-testid": "logs", "aria-labelledby": "logs-title" },
      h("h2", { id: "logs-title" }, "Logs"),
      h("form", { class: "log-filters", role: "search" },
        h("label", { for: "logs-step" }, "Step ", this.stepSelect),
        h("label", { for: "logs-level" }, "Level ", this.levelSelect),
        this.count),
      this.message,
      h("div", { class: "table-scroll" },
        h("table", { class: "log-table" },
          h("thead", null, h("tr", null, ["Time", "Level", "Step", "Message"].map((title) => h("th", { scope: "col" }, title)))),
          this.list)));
    this.el.querySelector("form").addEventListener("submit", (event) => event.preventDefault());
    this.stepSelect.addEventListener("change", () => this.load().catch(() => {}));
    this.levelSelect.addEventListener("change", () => this.load().catch(() => {}));
    this.seq = 0;
  }

  focus() {
    this.stepSelect.focus();
  }

  setSteps(steps) {
    const key = steps.map((step) => step.id).join(",");
    this.stepNames = new Map(steps.map((step) => [step.id, step.step_name]));
    if (key === this.stepsKey) return;
    this.stepsKey = key;
    const chosen = this.stepSelect.value;
    replace(this.stepSelect, h("option", { value: "" }, "All steps"),
      steps.map((step) => h("option", { value: step.id }, `${step.sequence_num ?? "·"}. ${step.step_name}`)));
    this.stepSelect.value = steps.some((step) => step.id === chosen) ? chosen : "";
  }

  async load() {
    const seq = ++this.seq;
    const stepId = this.stepSelect.value;
    const level = this.levelSelect.value;
    let answer;
    try {
      answer = await getJSON(withQuery(`/api/executions/${encodeURIComponent(this.executionId)}/logs`,
        { step_id: stepId, level }));
    } catch (error) {
      if (seq !== this.seq || isSilent(error)) return;
      replace(this.message, errorBox(error, "The logs could not be read"));
      throw error;
    }
    if (seq !== this.seq) return;
    replace(this.message);
    const rows = answer.logs || [];
    this.count.textContent = `${rows.length} line${rows.length === 1 ? "" : "s"}`;
    if (!rows.length) {
      replace(this.list, h("tr", { class: "empty" }, h("td", { colspan: "4" }, "No log lines.")));
      return;
    }
    replace(this.list, rows.map((row) => this.row(row)));
  }

  row(row) {
    const level = String(row.level || "").toLowerCase();
    const fields = row.fields && typeof row.fields === "object" ? row.fields : null;
    const hasFields = fields && Object.keys(fields).length > 0;
    const stepName = row.step_id ? this.stepNames.get(row.step_id) ?? row.module_name ?? row.step_id : "—";
    return h("tr", { "data-testid": "log-row", dataset: { level, stepId: row.step_id || "" } },
      h("td", { class: "nowrap" }, timeNode(row.created_at)),
      h("td", null, h("span", { class: `level level-${LEVELS.includes(level) ? level : "other"}` }, row.level ?? "")),
      h("td", { class: "wrap" }, stepName),
      h("td", { class: "wrap message" },
        h("div", { class: "log-message" }, row.message ?? ""),
        hasFields ? h("details", { class: "log-fields" },
          h("summary", null, `fields (${Object.keys(fields).length})`), keyValueTable(fields))
          : row.fields && typeof row.fields !== "object" ? h("div", { class: "muted" }, valueText(row.fields)) : null));
  }
}

// -- /traces/{trace_id} -----------------------------------------------------------------------------

async function mountTrace(main, setTitle) {
  const traceId = idFromPath("/traces/");
  setTitle(`Trace ${traceId.slice(0, 8)}`);
  const header = h("div", { class: "run-header" });
  const message = h("div", { class: "message-area" });
  const view = new TraceView({ traceId });
  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Trace ", h("span", { class: "mono wrap" }, traceId))),
    message,
    header,
    h("section", { class: "waterfall-section", "aria-labelledby": "wf-title" },
      h("h2", { id: "wf-title" }, "Waterfall"), legend(), view.el),
    view.panel.el);

  let firstLoad = true;
  let spans = [];
  const durationNode = h("span");
  function tickDuration() {
    const f = view.waterfall.figures;
    durationNode.textContent = f && spans.length
      ? `${formatDuration(f.total)}${view.waterfall.hasRunning ? " (running)" : ""}` : "—";
  }

  async function load() {
    let answer;
    try {
      answer = await getJSON(`/api/traces/${encodeURIComponent(traceId)}`);
    } catch (error) {
      if (isSilent(error)) return;
      if (firstLoad) setTitle("Trace not found");
      replace(message, errorBox(error, firstLoad ? "The trace could not be read" : "Refreshing the trace failed"));
      throw error;
    }
    replace(message);
    spans = answer.spans || [];
    const services = [...new Set(spans.map((line) => line.service_name).filter(Boolean))];
    const wanted = firstLoad ? new URLSearchParams(location.search).get("span") : null;
    view.update(spans, wanted);
    const roots = spans.filter((line) => !line.depth);
    replace(header, h("dl", { class: "fields grid" },
      field("Spans", String(spans.length)),
      field("Root", roots.length ? roots.map((line) => line.label ?? line.name).join(", ") : "—"),
      field("Started", spans.length ? timeNode(spans[0].start_time) : "—"),
      field("Duration", durationNode),
      field("Services", services.length ? services.join(", ") : "—"),
      field("Status", spans.length ? statusBadge(roots.length ? roots[0].status : spans[0].status) : "—")));
    tickDuration();
    firstLoad = false;
  }

  const poller = new Poller(async () => {
    await load();
    if (!view.waterfall.hasRunning) {
      poller.stop();
      ticker.stop();
    }
  }, 2000);
  const ticker = new Ticker(() => {
    view.waterfall.tick();
    tickDuration();
  });
  try {
    await load();
  } catch {
    return { keys: view.keys(() => {}) };
  }
  if (view.waterfall.hasRunning) {
    poller.start({ immediately: false });
    ticker.start();
  }
  return { keys: view.keys(() => {}) };
}

export function mount(main, { page, setTitle }) {
  return page === "trace" ? mountTrace(main, setTitle) : mountRun(main, setTitle);
}
