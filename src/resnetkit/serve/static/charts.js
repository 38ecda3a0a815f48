// Charts in plain SVG: a time-series line chart and a bar chart. Each chart records what it
// drew in data attributes (data-points, data-max), for people inspecting the page and tests.

import { el, fill, svgEl } from "./dom.js";

const WIDTH = 560;
const HEIGHT = 170;
const PAD = { left: 52, right: 10, top: 10, bottom: 22 };
export const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

/** A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten). */
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function xAxis(windowS, x) {
  const marks = [];
  const stepS = windowS <= 60 ? 15 : windowS <= 180 ? 30 : 60;
  for (let ago = windowS; ago >= 0; ago -= stepS) {
    const label = ago === 0 ? "now" : `-${ago >= 60 ? `${ago / 60}m` : `${ago}s`}`;
    const anchor = ago === windowS ? "start" : ago === 0 ? "end" : "middle";
    marks.push(svgEl("text", { x: x(-ago), y: HEIGHT - 6, class: "axis", "text-anchor": anchor }, label));
  }
  return marks;
}

function yAxis(ticks, format, y) {
  return ticks.map((value) => [
    svgEl("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value), class: "grid" }),
    svgEl("text", { x: PAD.left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" }, format(value)),
  ]);
}

/** SVG path data through the points, broken where a value is null; a lone point is a dot. */
function pathData(points, x, y) {
  let d = "";
  let run = 0; // points in the current stretch
  const endRun = () => {
    if (run === 1) d += "h0.1"; // with round caps, a dot
    run = 0;
  };
  for (const [t, value] of points) {
    if (value === null || value === undefined || !Number.isFinite(value)) {
      endRun();
      continue;
    }
    d += `${run ? "L" : "M"}${x(t).toFixed(1)},${y(value).toFixed(1)}`;
    run += 1;
  }
  endRun();
  return d;
}

/**
 * Draw time series into ``container`` (an element holding an <svg> and a legend).
 *
 * series: [{name, points: [[secondsAgo <= 0, value|null], ...]}]; format: value -> text.
 */
export function lineChart(container, { series, windowS, format, title }) {
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => Number.isFinite(v));
  const max = values.length ? Math.max(...values) : 0;
  const top = niceMax(max);
  const x = (t) => PAD.left + ((t + windowS) / windowS) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - (v / top) * (HEIGHT - PAD.top - PAD.bottom);
  const paths = series.map((s, i) =>
    svgEl("path", {
      d: pathData(s.points, x, y),
      class: "line",
      stroke: COLORS[i % COLORS.length],
      dataset: { series: s.name },
    }),
  );
  const svg = svgEl(
    "svg",
    {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label": title,
      dataset: { points: values.length, max },
    },
    svgEl("title", {}, title),
    yAxis([0, top / 2, top], format, y),
    xAxis(windowS, x),
    paths,
    values.length ? null : svgEl("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "nodata", "text-anchor": "middle" }, "waiting for traffic"),
  );
  const legend = el(
    "ul",
    { class: "legend" },
    series.map((s, i) => el("li", {}, el("span", { class: "swatch", style: `background:${COLORS[i % COLORS.length]}` }), s.name)),
  );
  container.dataset.points = String(values.length);
  container.dataset.max = String(max);
  fill(container, svg, legend);
}

/** Draw vertical bars into ``container``: bars = [[label, count], ...]. */
export function barChart(container, { bars, title }) {
  const max = Math.max(0, ...bars.map((b) => b[1]));
  const top = niceMax(max);
  const n = Math.max(bars.length, 1);
  const slot = (WIDTH - PAD.left - PAD.right) / n;
  const y = (v) => HEIGHT - PAD.bottom - (v / top) * (HEIGHT - PAD.top - PAD.bottom);
  const marks = bars.map(([label, count], i) => {
    const x0 = PAD.left + i * slot + slot * 0.15;
    return svgEl(
      "g",
      { dataset: { bucket: label, count } },
      svgEl("rect", { x: x0, y: y(count), width: slot * 0.7, height: Math.max(0, y(0) - y(count)), class: "bar" },
        svgEl("title", {}, `batch size ${label}: ${count} batches`)),
      svgEl("text", { x: x0 + slot * 0.35, y: HEIGHT - 6, class: "axis", "text-anchor": "middle" }, label),
      count > 0 ? svgEl("text", { x: x0 + slot * 0.35, y: y(count) - 3, class: "axis", "text-anchor": "middle" }, String(count)) : null,
    );
  });
  const svg = svgEl(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title, dataset: { total: bars.reduce((s, b) => s + b[1], 0) } },
    svgEl("title", {}, title),
    yAxis(Number.isInteger(top / 2) ? [0, top / 2, top] : [0, top], String, y),
    marks,
    max > 0 ? null : svgEl("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "nodata", "text-anchor": "middle" }, "no batches yet"),
  );
  container.dataset.total = String(bars.reduce((s, b) => s + b[1], 0));
  fill(container, svg);
}
