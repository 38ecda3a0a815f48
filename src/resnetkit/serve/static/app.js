// The dashboard: polls the server's read-only JSON every POLL_MS, keeps WINDOW_S of history
// in the page, and redraws the panels. It never sends a token and never changes the server's
// state (the upload panel only asks for predictions and explanations).

import { api, ApiError } from "./api.js";
import { barChart, lineChart } from "./charts.js";
import { byId, el, errorLine, fill } from "./dom.js";
import { ms } from "./format.js";
import { aliasesFromHistory, renderDrift, renderHeadline, renderHistory, renderModels, renderRollouts } from "./panels.js";
import { batchDistribution, intervalBetween, summarize } from "./stats.js";
import { setupUpload, updateModelChoices } from "./upload.js";

const POLL_MS = 2000;
const WINDOW_S = 300;
const HISTORY_EVERY_MS = 10000;

const state = {
  samples: [], // [{t: ms since epoch, interval}] within WINDOW_S
  previous: null, // {t, stats}: the last /v1/stats body
  models: [],
  historyByModel: new Map(),
  historyErrors: new Map(),
  historyAt: 0,
  historyFor: "",
};

function banner(message) {
  const node = byId("banner");
  node.hidden = !message;
  node.textContent = message || "";
}

async function fetchRollouts() {
  try {
    const body = await api("v1/rollouts");
    return Array.isArray(body.rollouts) ? body.rollouts : [];
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return []; // a server without rollouts
    throw err;
  }
}

async function refreshHistory(models) {
  const names = [...new Set(models.map((m) => m.name))];
  const key = names.join("\n");
  if (key === state.historyFor && Date.now() - state.historyAt < HISTORY_EVERY_MS) return;
  const answers = await Promise.allSettled(names.map((n) => api(`v1/models/${encodeURIComponent(n)}/history`)));
  const history = new Map();
  const errors = new Map();
  answers.forEach((answer, i) => {
    if (answer.status === "fulfilled") history.set(names[i], answer.value.events || []);
    else errors.set(names[i], answer.reason.message);
  });
  Object.assign(state, { historyByModel: history, historyErrors: errors, historyAt: Date.now(), historyFor: key });
}

function recordStats(stats) {
  const now = Date.now();
  if (state.previous) {
    const seconds = (now - state.previous.t) / 1000;
    state.samples.push({ t: now, interval: intervalBetween(state.previous.stats, stats, seconds) });
  }
  state.previous = { t: now, stats };
  state.samples = state.samples.filter((s) => now - s.t <= WINDOW_S * 1000);
  return now;
}

/** The charts' time span: what the page has seen, in whole minutes, from 1 to WINDOW_S / 60. */
function chartWindowS(now) {
  const seenS = state.samples.length ? (now - state.samples[0].t) / 1000 : 0;
  return Math.min(WINDOW_S, Math.max(60, Math.ceil(seenS / 60) * 60));
}

function drawCharts(now) {
  const ago = (s) => (s.t - now) / 1000;
  const windowS = chartWindowS(now);
  const versions = [...new Set(state.samples.flatMap((s) => Object.keys(s.interval.perVersion)))].sort();
  const throughput = versions.map((v) => ({ name: v, points: state.samples.map((s) => [ago(s), s.interval.perVersion[v] ?? null]) }));
  if (versions.length > 1) throughput.push({ name: "all", points: state.samples.map((s) => [ago(s), s.interval.rps]) });
  if (!throughput.length) throughput.push({ name: "all models", points: [] });
  const perInterval = state.samples.map((s) => [ago(s), summarize([s.interval])]);
  const pick = (field, scale = 1) => perInterval.map(([t, f]) => [t, f[field] === null ? null : f[field] * scale]);
  lineChart(byId("chart-throughput"), { title: "Requests per second", windowS, series: throughput, format: (v) => v.toFixed(v < 10 ? 1 : 0) });
  lineChart(byId("chart-latency"), {
    title: "Latency p50 and p95 (ms)",
    windowS,
    series: [{ name: "p50", points: pick("p50", 1000) }, { name: "p95", points: pick("p95", 1000) }],
    format: (v) => (v < 10 ? v.toFixed(1) : v.toFixed(0)),
  });
  lineChart(byId("chart-errors"), {
    title: "Error rate (%)",
    windowS,
    series: [{ name: "5xx", points: pick("errorRate", 100) }, { name: "4xx", points: pick("clientErrorRate", 100) }],
    format: (v) => `${v < 10 ? v.toFixed(1) : v.toFixed(0)}%`,
  });
}

function showStats(stats) {
  const now = recordStats(stats);
  const latest = state.samples.length ? state.samples[state.samples.length - 1].interval : null;
  renderHeadline(byId("headline"), latest, summarize(state.samples.map((s) => s.interval)), stats);
  drawCharts(now);
  barChart(byId("chart-batches"), { title: "Batches by size, since the server started", bars: batchDistribution(stats) });
}

function showQueues(stats) {
  const rows = (stats.models || []).filter((m) => m.model !== "-");
  fill(
    byId("queues"),
    rows.map((m) => el("span", { class: "queue" }, `${m.model}:${m.version} queue ${m.queue_depth}/${m.queue_capacity} · p50 ${ms(m.p50_s)} · p95 ${ms(m.p95_s)} since start`)),
  );
}

/** Show a settled request's answer in ``container``, or its error (nothing when quiet). */
function settle(answer, container, show, quiet = false) {
  if (answer.status === "fulfilled") {
    try {
      show(answer.value);
    } catch (err) {
      fill(container, errorLine(`Cannot show this: ${err.message}`));
    }
  } else if (quiet) {
    fill(container);
  } else {
    fill(container, errorLine(answer.reason.message));
  }
}

async function poll() {
  const [models, stats, rollouts] = await Promise.allSettled([api("v1/models"), api("v1/stats"), fetchRollouts()]);
  const down = [models, stats].every((a) => a.status === "rejected" && !(a.reason instanceof ApiError));
  banner(down ? `${models.reason.message}; retrying every ${POLL_MS / 1000} s.` : "");
  if (models.status === "fulfilled") {
    state.models = Array.isArray(models.value.models) ? models.value.models : [];
    updateModelChoices(state.models);
    await refreshHistory(state.models);
    renderHistory(byId("history"), state.historyByModel, state.historyErrors);
  }
  const statsBody = stats.status === "fulfilled" ? stats.value : null;
  settle(models, byId("models"), (body) => renderModels(byId("models"), state.models, statsBody, aliasesFromHistory(state.historyByModel)));
  settle(models, byId("drift"), () => renderDrift(byId("drift"), state.models));
  settle(stats, byId("headline"), showStats);
  settle(stats, byId("queues"), showQueues, true); // the headline says why
  settle(rollouts, byId("rollouts"), (list) => renderRollouts(byId("rollouts"), list));
  byId("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

async function loop() {
  const started = performance.now();
  try {
    await poll();
  } catch (err) {
    banner(`The dashboard hit an error: ${err.message}; retrying.`);
  }
  setTimeout(loop, Math.max(0, POLL_MS - (performance.now() - started)));
}

window.addEventListener("error", (event) => banner(`The dashboard hit an error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => banner(`The dashboard hit an error: ${event.reason?.message ?? event.reason}`));

setupUpload();
drawCharts(Date.now()); // empty axes until the first two polls give an interval
barChart(byId("chart-batches"), { title: "Batches by size, since the server started", bars: [] });
loop();
