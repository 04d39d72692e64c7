// "/sql": the read-only SQL console (POST /api/sql) with the tables and their columns.

import { getJSON, isSilent, postJSON } from "./api.js";
import { errorBox, formatDuration, h, replace, valueText } from "./dom.js";

const DEFAULT_QUERY = "SELECT workflow_id, status, count(*) AS runs\nFROM workflow_executions\nGROUP BY ALL\nORDER BY runs DESC";
const DEFAULT_LIMIT = 1000;

function cell(value) {
  if (value === null || value === undefined) return h("td", { class: "null" }, "NULL");
  if (typeof value === "number") return h("td", { class: "num" }, String(value));
  if (typeof value === "boolean") return h("td", null, String(value));
  return h("td", { class: "wrap" }, valueText(value));
}

export async function mount(main, { setTitle }) {
  setTitle("SQL");
  const params = new URLSearchParams(location.search);
  const input = h("textarea", {
    id: "sql-input", name: "query", "data-testid": "sql-input", rows: "8", spellcheck: "false", autocomplete: "off",
    "aria-label": "SQL query", placeholder: "SELECT … (Ctrl+Enter runs it)",
  });
  input.value = params.get("q") ?? DEFAULT_QUERY;
  const limit = h("input", { type: "number", min: "1", step: "1", id: "sql-limit", name: "limit", value: String(DEFAULT_LIMIT) });
  if (params.get("limit")) limit.value = params.get("limit");
  const run = h("button", { type: "submit", class: "primary", "data-testid": "sql-run" }, "Run");
  const status = h("span", { class: "muted sql-status", role: "status" });
  const output = h("div", { class: "sql-output" });
  const tables = h("div", { class: "tables", "data-testid": "tables" }, h("p", { class: "muted" }, "Loading the tables…"));

  const form = h("form", { class: "sql-form" },
    input,
    h("div", { class: "sql-actions" },
      run,
      h("label", { for: "sql-limit", class: "inline" }, "Row limit ", limit),
      h("span", { class: "muted" }, "Ctrl/⌘+Enter runs · read-only sandbox"),
      status));

  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "SQL console")),
    h("div", { class: "sql-layout" },
      h("aside", { class: "sql-side", "aria-labelledby": "tables-title" }, h("h2", { id: "tables-title" }, "Tables"), tables),
      h("div", { class: "sql-main" }, form, output)));

  let seq = 0;
  async function execute() {
    const query = input.value;
    if (!query.trim()) {
      replace(output, h("div", { class: "error", role: "alert", "data-testid": "sql-error" }, "Write a query first."));
      return;
    }
    const mine = ++seq;
    const url = new URL(location.href);
    url.searchParams.set("q", query);
    history.replaceState(null, "", url.pathname + url.search);
    const rowLimit = Number.parseInt(limit.value, 10);
    run.disabled = true;
    status.textContent = "Running…";
    const started = performance.now();
    let answer;
    try {
      answer = await postJSON("/api/sql", { query, limit: Number.isFinite(rowLimit) && rowLimit > 0 ? rowLimit : DEFAULT_LIMIT });
    } catch (error) {
      if (mine !== seq || isSilent(error)) return;
      run.disabled = false;
      status.textContent = "";
      const refused = error.body && error.body.kind === "refused";
      replace(output, h("div", { class: "error sql-error", role: "alert", "data-testid": "sql-error" },
        h("strong", null, refused ? "Refused: " : "Error: "), error.message));
      return;
    }
    if (mine !== seq) return;
    run.disabled = false;
    const elapsed = performance.now() - started;
    const columns = answer.columns || [];
    const rows = answer.rows || [];
    const types = answer.types || [];
    status.textContent = `${rows.length} row${rows.length === 1 ? "" : "s"} in ${formatDuration(elapsed)}`;
    replace(output, h("div", { class: "sql-result", "data-testid": "sql-result" },
      answer.truncated ? h("p", { class: "notice", role: "status" },
        `Truncated: only the first ${rows.length} rows show (limit ${answer.limit ?? rowLimit}). Add a LIMIT or raise the row limit.`) : null,
      h("div", { class: "table-scroll" },
        h("table", { class: "result" },
          h("thead", null, h("tr", null, columns.map((name, i) =>
            h("th", { scope: "col", title: types[i] || undefined }, name)))),
          h("tbody", null, rows.length
            ? rows.map((row) => h("tr", null, row.map(cell)))
            : h("tr", { class: "empty" }, h("td", { colspan: String(Math.max(columns.length, 1)) }, "No rows."))))),
      h("p", { class: "muted" }, `${answer.row_count ?? rows.length} row${(answer.row_count ?? rows.length) === 1 ? "" : "s"}${answer.truncated ? " (more exist)" : ""}.`)));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    execute();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      execute();
    }
  });

  function insertAtCursor(text) {
    const from = input.selectionStart ?? input.value.length;
    const to = input.selectionEnd ?? from;
    input.setRangeText(text, from, to, "end");
    input.focus();
  }

  try {
    const answer = await getJSON("/api/tables");
    const list = answer.tables || [];
    replace(tables, list.length ? h("ul", { class: "table-list" }, list.map((table) => {
      const name = h("button", { type: "button", class: "link-button table-name", title: `SELECT * FROM ${table.name} LIMIT 100` }, table.name);
      name.addEventListener("click", () => {
        input.value = `SELECT * FROM ${table.name} LIMIT 100`;
        input.focus();
        input.setSelectionRange(input.value.length, input.value.length);
      });
      return h("li", null,
        h("div", { class: "table-row" }, name, " ",
          h("span", { class: "muted kind" }, table.kind === "view" ? "view" : "table")),
        h("details", null,
          h("summary", null, `${(table.columns || []).length} columns`),
          h("ul", { class: "columns" }, (table.columns || []).map((column) => {
            const columnButton = h("button", { type: "button", class: "link-button", title: "Insert the column name" }, column.name);
            columnButton.addEventListener("click", () => insertAtCursor(column.name));
            return h("li", null, columnButton, " ", h("span", { class: "muted type" }, column.type));
          }))));
    })) : h("p", { class: "muted" }, "No tables."));
  } catch (error) {
    if (!isSilent(error)) replace(tables, errorBox(error, "The tables could not be read"));
  }

  return {
    keys: {
      focus: () => {
        input.focus();
      },
      close: () => false,
    },
  };
}
