// Small SVG charts of our own: lines over time (with points that tell their value on hover) and
// bars over time. Drawn at the pixel width of their container, so text keeps its size.

import { formatShortTime, h, s } from "./dom.js";

const MARGIN = { left: 58, right: 14, top: 14, bottom: 30 };

// About `count` round values covering [min, max].
export function niceTicks(min, max, count = 4) {
  if (!(max > min)) max = min + 1;
  const span = max - min;
  const rough = span / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((candidate) => candidate >= rough) || rough;
  const ticks = [];
  for (let value = Math.floor(min / step) * step; value <= max + step * 1e-9; value += step) {
    ticks.push(Number(value.toFixed(12)));
  }
  return ticks;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

export function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  if (spanMs <= 36 * 3600 * 1000) return formatShortTime(ms);
  if (spanMs <= 8 * 24 * 3600 * 1000) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}h`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function fullTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function frame({ width, height, x0, x1, yMax, yFormat, title }) {
  const w = Math.max(width, 200);
  const innerW = w - MARGIN.left - MARGIN.right;
  const innerH = height - MARGIN.top - MARGIN.bottom;
  const xs = (x) => MARGIN.left + ((x - x0) / Math.max(x1 - x0, 1)) * innerW;
  const yTicks = niceTicks(0, yMax, 4);
  const top = yTicks[yTicks.length - 1] || yMax || 1;
  const ys = (y) => MARGIN.top + innerH - (y / top) * innerH;
  const svg = s("svg", {
    class: "chart", width: String(w), height: String(height), viewBox: `0 0 ${w} ${height}`, role: "img", "aria-label": title,
  }, s("title", null, title));
  const grid = s("g", { class: "grid" });
  for (const tick of yTicks) {
    const y = ys(tick);
    grid.append(
      s("path", { class: "gridline", d: `M${MARGIN.left},${y}H${w - MARGIN.right}` }),
      s("text", { class: "tick-label", x: String(MARGIN.left - 6), y: String(y + 4), "text-anchor": "end" }, yFormat(tick)));
  }
  const spanMs = x1 - x0;
  const xTickCount = Math.max(2, Math.min(6, Math.floor(innerW / 90)));
  for (let i = 0; i <= xTickCount; i++) {
    const x = x0 + (spanMs * i) / xTickCount;
    const px = xs(x);
    grid.append(
      s("path", { class: "tickmark", d: `M${px},${MARGIN.top + innerH}v5` }),
      s("text", {
        class: "tick-label", x: String(px), y: String(MARGIN.top + innerH + 18),
        "text-anchor": i === 0 ? "start" : i === xTickCount ? "end" : "middle",
      }, timeLabel(x, spanMs)));
  }
  grid.append(s("path", {
    class: "axis", d: `M${MARGIN.left},${MARGIN.top}V${MARGIN.top + innerH}H${w - MARGIN.right}`,
  }));
  svg.append(grid);
  return { svg, xs, ys, innerW, innerH, w };
}

// points: [{x: ms, values: {key: number|null}, label}]; series: [{key, label, cls}].
export function lineChart({ points, series, width, height = 220, x0, x1, yFormat, title, pointTitle }) {
  let yMax = 0;
  for (const point of points) {
    for (const { key } of series) {
      const v = point.values[key];
      if (typeof v === "number" && v > yMax) yMax = v;
    }
  }
  const f = frame({ width, height, x0, x1, yMax: yMax || 1, yFormat, title });
  for (const { key, label, cls } of series) {
    let d = "";
    let pen = false;
    const dots = s("g", { class: `dots ${cls}` });
    for (const point of points) {
      const v = point.values[key];
      if (typeof v !== "number") {
        pen = false;
        continue;
      }
      const x = f.xs(point.x);
      const y = f.ys(v);
      d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
      pen = true;
      dots.append(s("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: "3" },
        s("title", null, pointTitle(label, v, point))));
    }
    f.svg.append(s("path", { class: `line ${cls}`, d: d || "M0,0" }), dots);
  }
  if (!points.some((point) => series.some(({ key }) => typeof point.values[key] === "number"))) {
    f.svg.append(s("text", { class: "no-data", x: String(MARGIN.left + f.innerW / 2), y: String(MARGIN.top + f.innerH / 2), "text-anchor": "middle" },
      "No ended steps in this window"));
  }
  return f.svg;
}

// bars: [{x, x2, y (0..yMax), title}].
export function barChart({ bars, width, height = 180, x0, x1, yMax, yFormat, title, cls = "bar-fail" }) {
  const f = frame({ width, height, x0, x1, yMax, yFormat, title });
  const group = s("g", { class: `bars ${cls}` });
  for (const bar of bars) {
    const left = f.xs(bar.x);
    const right = f.xs(bar.x2);
    const barWidth = Math.max(1, right - left - 1);
    const y = f.ys(bar.y);
    const height0 = Math.max(1.5, f.ys(0) - y);
    group.append(s("rect", {
      x: left.toFixed(1), y: (f.ys(0) - height0).toFixed(1), width: barWidth.toFixed(1), height: height0.toFixed(1),
      class: bar.y > 0 ? "has-failures" : "no-failures",
    }, s("title", null, bar.title)));
  }
  f.svg.append(group);
  if (!bars.length) {
    f.svg.append(s("text", { class: "no-data", x: String(MARGIN.left + f.innerW / 2), y: String(MARGIN.top + f.innerH / 2), "text-anchor": "middle" },
      "No ended steps in this window"));
  }
  return f.svg;
}

export function legendOf(series) {
  return h("ul", { class: "chart-legend" }, series.map(({ label, cls }) =>
    h("li", null, h("span", { class: `swatch ${cls}`, "aria-hidden": "true" }), label)));
}
