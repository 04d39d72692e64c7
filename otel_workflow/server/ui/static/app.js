// The entry module: the header, the page of location.pathname, and the keyboard.

import { h, isTyping, replace } from "./dom.js";

const PAGES = [
  { name: "runs", nav: "runs", match: (path) => path === "/" || path === "/index.html",
    load: () => import("./runs.js") },
  { name: "run", nav: "runs", match: (path) => /^\/executions\/[^/]+\/?$/.test(path),
    load: () => import("./run.js") },
  { name: "trace", nav: "runs", match: (path) => /^\/traces\/[^/]+\/?$/.test(path),
    load: () => import("./run.js") },
  { name: "stats", nav: "stats", match: (path) => path === "/stats" || path === "/stats/",
    load: () => import("./stats.js") },
  { name: "sql", nav: "sql", match: (path) => path === "/sql" || path === "/sql/",
    load: () => import("./sql.js") },
];

const NAV = [
  { id: "runs", href: "/", label: "Runs" },
  { id: "stats", href: "/stats", label: "Stats" },
  { id: "sql", href: "/sql", label: "SQL" },
];

export function setTitle(where) {
  document.title = where ? `${where} · otel-workflow` : "otel-workflow";
}

function header(active) {
  return h("header", { class: "site-header" },
    h("a", { class: "brand", href: "/" }, "otel-workflow"),
    h("nav", { "aria-label": "Main" },
      h("ul", null, NAV.map((item) => h("li", null,
        h("a", { href: item.href, "aria-current": item.id === active ? "page" : undefined }, item.label))))),
    h("span", { class: "header-hint", "aria-hidden": "true" }, "/ filter · j k move · Enter open · Esc close"));
}

let current = null;

function onKey(event) {
  if (!current || !current.keys) return;
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
  const keys = current.keys;
  if (event.key === "Escape") {
    if (keys.close && keys.close()) event.preventDefault();
    return;
  }
  if (isTyping(event.target)) return;
  if (event.key === "/" && keys.focus) {
    event.preventDefault();
    keys.focus();
  } else if (event.key === "j" && keys.move) {
    event.preventDefault();
    keys.move(1);
  } else if (event.key === "k" && keys.move) {
    event.preventDefault();
    keys.move(-1);
  } else if (event.key === "Enter" && keys.open) {
    const target = event.target;
    // Links and buttons keep their own Enter.
    if (target instanceof Element && target.closest("a, button, summary")) return;
    if (keys.open()) event.preventDefault();
  }
}

async function start() {
  const path = location.pathname;
  const page = PAGES.find((candidate) => candidate.match(path));
  const root = document.getElementById("app") || document.body;
  const main = h("main", { id: "main", tabindex: "-1" });
  replace(root, header(page ? page.nav : null), main);
  document.addEventListener("keydown", onKey);
  if (!page) {
    setTitle("Not found");
    replace(main, h("h1", null, "Not found"),
      h("p", null, "There is no page at this address. ", h("a", { href: "/" }, "See the runs.")));
    return;
  }
  try {
    const module = await page.load();
    current = (await module.mount(main, { page: page.name, setTitle })) || null;
  } catch (error) {
    replace(main, h("div", { class: "error", role: "alert" },
      `This page could not start: ${error && error.message ? error.message : error}`));
    throw error;
  }
}

start();
