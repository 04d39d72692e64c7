// "/": the runs, newest first, filtered by the query string, live.

import { getJSON, isSilent, withQuery } from "./api.js";
import { errorBox, formatDuration, h, parseTime, pathOf, replace, statusBadge, timeNode } from "./dom.js";
import { Poller, Ticker } from "./poll.js";

const STATUSES = ["running", "completed", "failed"];
const TEXT_FILTERS = [
  { name: "workflow_id", label: "Workflow", placeholder: "order-pipeline, other", list: "workflow-ids" },
  { name: "since", label: "Since", placeholder: "1h, 7d or 2024-05-01T10:00", list: "time-windows" },
  { name: "until", label: "Until", placeholder: "30m or ISO time", list: "time-windows" },
  { name: "triggered_by", label: "Triggered by", placeholder: "alice@example.com" },
  { name: "error_contains", label: "Error contains", placeholder: "timeout" },
];
const DEFAULT_LIMIT = 50;

// -- the state in the URL -------------------------------------------------------------------------

function splitList(text) {
  return text.split(",").map((part) => part.trim()).filter(Boolean);
}

function readState(search) {
  const query = new URLSearchParams(search);
  const number = (name, fallback) => {
    const value = Number.parseInt(query.get(name) || "", 10);
    return Number.isFinite(value) && value >= 0 ? value : fallback;
  };
  return {
    status: query.getAll("status").filter(Boolean),
    workflow_id: query.getAll("workflow_id").flatMap(splitList),
    since: query.get("since") || "",
    until: query.get("until") || "",
    triggered_by: query.get("triggered_by") || "",
    error_contains: query.get("error_contains") || "",
    offset: number("offset", 0),
    limit: Math.max(1, Math.min(number("limit", DEFAULT_LIMIT), 1000)),
  };
}

function filterParams(state) {
  return {
    status: state.status,
    workflow_id: state.workflow_id,
    since: state.since,
    until: state.until,
    triggered_by: state.triggered_by,
    error_contains: state.error_contains,
  };
}

function pageUrl(state) {
  return withQuery("/", {
    ...filterParams(state),
    offset: state.offset || undefined,
    limit: state.limit !== DEFAULT_LIMIT ? state.limit : undefined,
  });
}

// -- the page -------------------------------------------------------------------------------------

export async function mount(main, { setTitle }) {
  setTitle("Runs");
  let state = readState(location.search);
  let rows = [];
  let selected = -1;
  let selectedId = null;
  let loadSeq = 0;
  let cursor = null;
  const workflowIds = new Set();
  const ticking = [];

  // The form.
  const statusBoxes = STATUSES.map((status) =>
    h("input", { type: "checkbox", name: "status", value: status, id: `filter-status-${status}` }));
  const inputs = {};
  const form = h("form", { class: "filters", "data-testid": "filter-form", role: "search", action: "/" },
    h("fieldset", { class: "filter-statuses" },
      h("legend", null, "Status"),
      statusBoxes.map((box) => h("label", { for: box.id, class: "check" }, box, " ", statusBadge(box.value)))),
    TEXT_FILTERS.map((field) => {
      const input = h("input", {
        type: "text", name: field.name, id: `filter-${field.name}`, placeholder: field.placeholder,
        list: field.list, autocomplete: "off", spellcheck: "false",
      });
      inputs[field.name] = input;
      return h("label", { class: "field", for: input.id }, h("span", null, field.label), input);
    }),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", on: { click: () => apply({ ...readState(""), limit: state.limit }) } },
        "Clear")),
    h("datalist", { id: "time-windows" },
      ["15m", "1h", "6h", "24h", "7d", "30d"].map((value) => h("option", { value }))),
  );
  const workflowList = h("datalist", { id: "workflow-ids" });
  form.append(workflowList);

  const live = h("span", { class: "live", "data-testid": "live-indicator", role: "status", dataset: { state: "starting" } },
    "○ connecting…");
  const message = h("div", { class: "message-area" });
  const tbody = h("tbody");
  const table = h("table", { class: "runs", "data-testid": "runs-table" },
    h("thead", null, h("tr", null,
      ["Status", "Workflow", "Run", "Started", "Duration", "Step / error", "Trigger", "Triggered by", "Service"]
        .map((title) => h("th", { scope: "col" }, title)))),
    tbody);
  const prev = h("button", { type: "button", on: { click: () => page(-1) } }, "← Prev");
  const next = h("button", { type: "button", on: { click: () => page(1) } }, "Next →");
  const pageInfo = h("span", { class: "page-info" });
  const pager = h("div", { class: "pager" }, prev, pageInfo, next);

  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Runs"), live),
    form,
    message,
    h("div", { class: "table-scroll" }, table),
    pager);

  function writeForm() {
    for (const box of statusBoxes) box.checked = state.status.includes(box.value);
    inputs.workflow_id.value = state.workflow_id.join(", ");
    for (const name of ["since", "until", "triggered_by", "error_contains"]) inputs[name].value = state[name];
  }

  function readForm() {
    return {
      status: statusBoxes.filter((box) => box.checked).map((box) => box.value),
      workflow_id: splitList(inputs.workflow_id.value),
      since: inputs.since.value.trim(),
      until: inputs.until.value.trim(),
      triggered_by: inputs.triggered_by.value.trim(),
      error_contains: inputs.error_contains.value.trim(),
      offset: 0,
      limit: state.limit,
    };
  }

  function apply(newState) {
    state = newState;
    writeForm();
    const url = pageUrl(state);
    if (url !== location.pathname + location.search) history.pushState(null, "", url);
    selected = -1;
    selectedId = null;
    load();
  }

  function page(direction) {
    const offset = Math.max(0, state.offset + direction * state.limit);
    if (offset === state.offset) return;
    apply({ ...state, offset });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply(readForm());
  });
  for (const box of statusBoxes) box.addEventListener("change", () => apply(readForm()));
  window.addEventListener("popstate", () => {
    state = readState(location.search);
    writeForm();
    load();
  });

  // The rows.
  function durationCell(row) {
    const cell = h("td", { class: "num duration" });
    if (row.status === "running" && row.completed_at === null) {
      const started = parseTime(row.started_at);
      if (started !== null) ticking.push({ cell, started });
      cell.textContent = started !== null ? formatDuration(Date.now() - started) : "—";
      cell.classList.add("ticking");
    } else {
      cell.textContent = formatDuration(row.duration_ms);
    }
    return cell;
  }

  function runRow(row, index) {
    const href = pathOf("executions", row.id);
    const step = row.status === "running" && row.current_step
      ? h("span", { class: "current-step" }, h("span", { "aria-hidden": "true" }, "▶ "), row.current_step)
      : row.error_message ? h("span", { class: "error-text" }, row.error_message) : "";
    const tr = h("tr", {
      "data-testid": "run-row", dataset: { id: row.id, status: row.status }, tabindex: "-1",
      class: row.id === selectedId ? "selected" : undefined,
      "aria-selected": row.id === selectedId ? "true" : undefined,
    },
      h("td", null, statusBadge(row.status)),
      h("td", { class: "wrap" }, h("a", { href }, row.workflow_id || "(no workflow)")),
      h("td", { class: "mono" }, h("a", { href, title: row.id }, String(row.id).slice(0, 8))),
      h("td", { class: "nowrap" }, timeNode(row.started_at)),
      durationCell(row),
      h("td", { class: "wrap" }, step),
      h("td", { class: "wrap" }, row.trigger_type || ""),
      h("td", { class: "wrap" }, row.triggered_by || ""),
      h("td", { class: "wrap" }, row.service_name || ""));
    tr.addEventListener("click", (event) => {
      if (event.target instanceof Element && event.target.closest("a")) return;
      select(index);
      location.assign(href);
    });
    return tr;
  }

  function render(list, more) {
    ticking.length = 0;
    rows = list;
    selected = selectedId === null ? -1 : rows.findIndex((row) => row.id === selectedId);
    if (rows.length === 0) {
      replace(tbody, h("tr", { class: "empty" },
        h("td", { colspan: "9" }, state.offset > 0 ? "No more runs." : "No runs match these filters.")));
    } else {
      replace(tbody, rows.map(runRow));
    }
    let added = false;
    for (const row of rows) {
      if (row.workflow_id && !workflowIds.has(row.workflow_id)) {
        workflowIds.add(row.workflow_id);
        added = true;
      }
    }
    if (added) replace(workflowList, [...workflowIds].sort().map((value) => h("option", { value })));
    prev.disabled = state.offset === 0;
    next.disabled = !more;
    pageInfo.textContent = rows.length
      ? `${state.offset + 1}–${state.offset + rows.length}${more ? "" : " (end)"}`
      : "";
  }

  async function load() {
    const seq = ++loadSeq;
    const path = withQuery("/api/executions", { ...filterParams(state), offset: state.offset, limit: state.limit + 1 });
    try {
      const answer = await getJSON(path);
      if (seq !== loadSeq) return;
      const list = answer.executions || [];
      render(list.slice(0, state.limit), list.length > state.limit);
      replace(message);
    } catch (error) {
      if (seq !== loadSeq || isSilent(error)) return;
      replace(message, errorBox(error, "The runs could not be read"));
      throw error;
    }
  }

  // Live: poll the change cursor every second, read the list again only when it moved.
  async function poll() {
    const answer = await getJSON("/api/changes");
    if (answer.cursor !== cursor) {
      const first = cursor === null;
      cursor = answer.cursor;
      if (!first) await load();
    }
  }

  function showState(kind, error) {
    live.dataset.state = kind;
    live.title = "";
    if (kind === "live") {
      live.textContent = "● Live";
      live.title = "Checking for new runs every second";
    } else if (kind === "paused") {
      live.textContent = "❚❚ Paused";
      live.title = "Paused while the tab is hidden";
    } else if (kind === "error") {
      if (isSilent(error)) return;
      live.textContent = "⚠ Offline, retrying";
      live.title = error && error.message ? error.message : String(error);
    } else if (kind === "stopped") {
      live.textContent = "○ Stopped";
    }
  }

  const poller = new Poller(poll, 1000, showState);
  const ticker = new Ticker(() => {
    const now = Date.now();
    for (const { cell, started } of ticking) cell.textContent = formatDuration(now - started);
  });

  // Selection (j/k) and opening (Enter).
  function select(index) {
    const trs = tbody.querySelectorAll("tr[data-testid=run-row]");
    if (!trs.length) return;
    const clamped = Math.max(0, Math.min(index, trs.length - 1));
    for (const tr of tbody.querySelectorAll("tr.selected")) {
      tr.classList.remove("selected");
      tr.removeAttribute("aria-selected");
    }
    const tr = trs[clamped];
    tr.classList.add("selected");
    tr.setAttribute("aria-selected", "true");
    tr.focus({ preventScroll: true });
    tr.scrollIntoView({ block: "nearest" });
    selected = clamped;
    selectedId = tr.dataset.id;
  }

  writeForm();
  // The cursor first, then the list: a change between the two shows at the next poll.
  try {
    cursor = (await getJSON("/api/changes")).cursor;
  } catch {
    // Unreachable for now: the poller says so and reads the cursor again.
  }
  load().catch(() => {});
  poller.start({ immediately: false });
  ticker.start();

  return {
    keys: {
      focus: () => {
        inputs.workflow_id.focus();
        inputs.workflow_id.select();
      },
      move: (delta) => select(selected < 0 ? 0 : selected + delta),
      open: () => {
        if (selected < 0 || !rows[selected]) return false;
        location.assign(pathOf("executions", rows[selected].id));
        return true;
      },
      close: () => false,
    },
  };
}
