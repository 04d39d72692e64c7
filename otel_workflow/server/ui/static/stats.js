// "/stats": per-step figures for a window, and charts of percentiles and failure rate over time.

import { getJSON, isSilent, withQuery } from "./api.js";
import { errorBox, formatDuration, formatPercent, h, parseTime, replace } from "./dom.js";
import { barChart, fullTime, legendOf, lineChart } from "./chart.js";

const PRESETS = ["1h", "24h", "7d", "30d"];
const PERCENTILES = [
  { key: "p50_ms", label: "p50", cls: "s-p50" },
  { key: "p95_ms", label: "p95", cls: "s-p95" },
  { key: "p99_ms", label: "p99", cls: "s-p99" },
];

function readState(search) {
  const query = new URLSearchParams(search);
  const since = query.get("since") || "";
  const until = query.get("until") || "";
  const preset = !since ? "24h" : !until && PRESETS.includes(since) ? since : "custom";
  return {
    preset,
    since: since || "24h",
    until,
    workflow_id: query.get("workflow_id") || "",
    step_name: query.get("step_name") || "",
  };
}

function pageUrl(state) {
  return withQuery("/stats", {
    since: state.since, until: state.until, workflow_id: state.workflow_id, step_name: state.step_name,
  });
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// An ISO time (or "7d") as the value of an <input type=datetime-local>, in local time.
function localInput(text) {
  const ms = parseTime(text);
  if (ms === null) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function isoOfLocal(value) {
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : new Date(ms).toISOString();
}

export async function mount(main, { setTitle }) {
  setTitle("Stats");
  let state = readState(location.search);
  let series = null;
  let seq = 0;

  const windowSelect = h("select", { name: "window", id: "stats-window" },
    [["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["custom", "Custom…"]]
      .map(([value, label]) => h("option", { value }, label)));
  const sinceInput = h("input", { type: "datetime-local", name: "since", id: "stats-since" });
  const untilInput = h("input", { type: "datetime-local", name: "until", id: "stats-until" });
  const custom = h("span", { class: "custom-window" },
    h("label", { for: "stats-since", class: "field" }, h("span", null, "Since"), sinceInput),
    h("label", { for: "stats-until", class: "field" }, h("span", null, "Until"), untilInput));
  const workflowInput = h("input", {
    type: "text", name: "workflow_id", id: "stats-workflow", placeholder: "all workflows", list: "stats-workflows", autocomplete: "off",
  });
  const workflowList = h("datalist", { id: "stats-workflows" });
  const form = h("form", { class: "filters stats-filters", role: "search" },
    h("label", { for: "stats-window", class: "field" }, h("span", null, "Window"), windowSelect),
    custom,
    h("label", { for: "stats-workflow", class: "field" }, h("span", null, "Workflow"), workflowInput),
    workflowList,
    h("div", { class: "filter-buttons" }, h("button", { type: "submit", class: "primary" }, "Apply")));

  const message = h("div", { class: "message-area" });
  const workflowsBox = h("div", { class: "table-scroll" });
  const tbody = h("tbody");
  const table = h("table", { class: "stats", "data-testid": "stats-table" },
    h("thead", null, h("tr", null,
      ["Workflow", "Step", "Count", "Failed", "Skipped", "Failure rate", "p50", "p95", "p99", "Max"]
        .map((title, i) => h("th", { scope: "col", class: i >= 2 ? "num" : undefined }, title)))),
    tbody);
  const chartScope = h("p", { class: "chart-scope" });
  const percentilesBox = h("div", { class: "chart-box", "data-testid": "chart-percentiles" });
  const failuresBox = h("div", { class: "chart-box", "data-testid": "chart-failures" });

  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Stats")),
    form,
    message,
    h("section", { class: "charts", "aria-labelledby": "charts-title" },
      h("h2", { id: "charts-title" }, "Over time"),
      chartScope,
      h("div", { class: "chart-grid" },
        h("figure", null, h("figcaption", null, "Step duration percentiles"), legendOf(PERCENTILES), percentilesBox),
        h("figure", null, h("figcaption", null, "Failure rate"), failuresBox))),
    h("section", { "aria-labelledby": "wf-stats-title" }, h("h2", { id: "wf-stats-title" }, "Workflows"), workflowsBox),
    h("section", { "aria-labelledby": "steps-title" },
      h("h2", { id: "steps-title" }, "Steps"),
      h("p", { class: "muted" }, "Choose a step to chart it alone."),
      h("div", { class: "table-scroll" }, table)));

  function writeForm() {
    windowSelect.value = state.preset;
    custom.hidden = state.preset !== "custom";
    sinceInput.value = state.preset === "custom" ? localInput(state.since) : "";
    untilInput.value = state.preset === "custom" ? localInput(state.until) : "";
    workflowInput.value = state.workflow_id;
  }

  function readForm() {
    const preset = windowSelect.value;
    if (preset !== "custom") {
      return { ...state, preset, since: preset, until: "", workflow_id: workflowInput.value.trim() };
    }
    return {
      ...state, preset, since: isoOfLocal(sinceInput.value) || state.since, until: isoOfLocal(untilInput.value),
      workflow_id: workflowInput.value.trim(),
    };
  }

  function apply(newState, { push = true } = {}) {
    state = newState;
    writeForm();
    const url = pageUrl(state);
    if (push && url !== location.pathname + location.search) history.pushState(null, "", url);
    load();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply(readForm());
  });
  windowSelect.addEventListener("change", () => {
    if (windowSelect.value === "custom") {
      custom.hidden = false;
      if (!sinceInput.value) sinceInput.value = localInput(new Date(Date.now() - 24 * 3600 * 1000).toISOString());
      sinceInput.focus();
    } else {
      apply(readForm());
    }
  });
  window.addEventListener("popstate", () => apply(readState(location.search), { push: false }));

  function stepRow(step) {
    const chosen = state.step_name === step.step_name;
    const button = h("button", { type: "button", class: "link-button", "aria-pressed": chosen ? "true" : "false" }, step.step_name);
    button.addEventListener("click", () =>
      apply({ ...state, step_name: chosen ? "" : step.step_name, workflow_id: state.workflow_id || step.workflow_id || "" }));
    return h("tr", { class: chosen ? "selected" : undefined },
      h("td", { class: "wrap" }, step.workflow_id || "—"),
      h("td", { class: "wrap" }, button),
      h("td", { class: "num" }, String(step.count)),
      h("td", { class: "num" }, String(step.failed)),
      h("td", { class: "num" }, String(step.skipped ?? 0)),
      h("td", { class: "num" }, formatPercent(step.failure_rate)),
      h("td", { class: "num" }, formatDuration(step.p50_ms)),
      h("td", { class: "num" }, formatDuration(step.p95_ms)),
      h("td", { class: "num" }, formatDuration(step.p99_ms)),
      h("td", { class: "num" }, formatDuration(step.max_ms)));
  }

  function workflowsTable(workflows) {
    if (!workflows.length) return h("p", { class: "muted" }, "No runs in this window.");
    return h("table", { class: "workflows" },
      h("thead", null, h("tr", null,
        ["Workflow", "Runs", "Failed", "Running", "Failure rate", "p50", "p95", "p99", "Max"]
          .map((title, i) => h("th", { scope: "col", class: i >= 1 ? "num" : undefined }, title)))),
      h("tbody", null, workflows.map((wf) => {
        const button = h("button", { type: "button", class: "link-button" }, wf.workflow_id || "—");
        button.addEventListener("click", () => apply({ ...state, workflow_id: wf.workflow_id || "", step_name: "" }));
        return h("tr", null,
          h("td", { class: "wrap" }, button),
          h("td", { class: "num" }, String(wf.count)),
          h("td", { class: "num" }, String(wf.failed)),
          h("td", { class: "num" }, String(wf.running ?? 0)),
          h("td", { class: "num" }, formatPercent(wf.failure_rate)),
          h("td", { class: "num" }, formatDuration(wf.p50_ms)),
          h("td", { class: "num" }, formatDuration(wf.p95_ms)),
          h("td", { class: "num" }, formatDuration(wf.p99_ms)),
          h("td", { class: "num" }, formatDuration(wf.max_ms)));
      })));
  }

  function drawCharts() {
    if (!series) return;
    const x0 = parseTime(series.since);
    const x1 = parseTime(series.until);
    const bucketMs = (series.bucket_s || 60) * 1000;
    const buckets = (series.series || []).map((bucket) => ({ ...bucket, x: parseTime(bucket.start) }))
      .filter((bucket) => bucket.x !== null);
    const from = x0 ?? (buckets.length ? buckets[0].x : Date.now() - 86400000);
    const to = x1 ?? (buckets.length ? buckets[buckets.length - 1].x + bucketMs : Date.now());
    const width = percentilesBox.clientWidth || 600;
    const points = buckets.map((bucket) => ({ x: bucket.x + bucketMs / 2, values: bucket, bucket }));
    replace(percentilesBox, lineChart({
      points, series: PERCENTILES, width, x0: from, x1: to,
      yFormat: (v) => formatDuration(v), title: "Step duration percentiles over time",
      pointTitle: (label, v, point) =>
        `${label} ${formatDuration(v)} · ${fullTime(point.bucket.x)} (${point.bucket.count} step${point.bucket.count === 1 ? "" : "s"})`,
    }));
    const bars = buckets.filter((bucket) => bucket.count > 0).map((bucket) => ({
      x: bucket.x, x2: bucket.x + bucketMs, y: bucket.failure_rate ?? (bucket.count ? bucket.failed / bucket.count : 0),
      title: `${fullTime(bucket.x)}: ${bucket.failed} of ${bucket.count} failed (${formatPercent(bucket.failure_rate ?? bucket.failed / bucket.count)})`,
    }));
    replace(failuresBox, barChart({
      bars, width: failuresBox.clientWidth || width, x0: from, x1: to, yMax: 1,
      yFormat: (v) => formatPercent(v), title: "Failure rate over time",
    }));
  }

  async function load() {
    const mine = ++seq;
    const params = { since: state.since, until: state.until, workflow_id: state.workflow_id };
    chartScope.textContent = `${state.step_name ? `Step “${state.step_name}”` : "All steps"}` +
      `${state.workflow_id ? ` of ${state.workflow_id}` : ""}.`;
    if (state.step_name) {
      const all = h("button", { type: "button", class: "link-button" }, "Show all steps");
      all.addEventListener("click", () => apply({ ...state, step_name: "" }));
      chartScope.append(" ", all);
    }
    const problems = [];
    const [stats, seriesAnswer] = await Promise.all([
      getJSON(withQuery("/api/stats", params)).catch((error) => { problems.push(["The stats could not be read", error]); return null; }),
      getJSON(withQuery("/api/stats/series", { ...params, step_name: state.step_name, buckets: 60 }))
        .catch((error) => { problems.push(["The series could not be read", error]); return null; }),
    ]);
    if (mine !== seq) return;
    const shown = problems.filter(([, error]) => !isSilent(error));
    replace(message, shown.map(([prefix, error]) => errorBox(error, prefix)));
    if (stats) {
      const steps = stats.steps || [];
      if (steps.length) replace(tbody, steps.map(stepRow));
      else replace(tbody);
      table.classList.toggle("is-empty", !steps.length);
      replace(workflowsBox, workflowsTable(stats.workflows || []));
      const names = new Set([...workflowList.options].map((option) => option.value));
      for (const wf of stats.workflows || []) {
        if (wf.workflow_id && !names.has(wf.workflow_id)) workflowList.append(h("option", { value: wf.workflow_id }));
      }
    }
    series = seriesAnswer;
    if (series) {
      drawCharts();
    } else {
      replace(percentilesBox, h("p", { class: "muted" }, "No chart."));
      replace(failuresBox, h("p", { class: "muted" }, "No chart."));
    }
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 150);
  });

  writeForm();
  await load();
  return {
    keys: {
      focus: () => workflowInput.focus(),
      close: () => false,
    },
  };
}
