// The read-only panels: served models, alias history, rollouts, drift. Each takes plain
// API data and redraws its container; strings from the server only ever become text.

import { badge, el, emptyLine, errorLine, fill, table } from "./dom.js";
import { ms, num, pct, version, when } from "./format.js";
import { currentAliases, versionKey } from "./stats.js";

const DETECTORS = {
  ks_pca: "KS test on PCA of embeddings",
  mmd: "MMD on embeddings",
  chi2_class: "χ² on predicted classes",
  ks_confidence: "KS test on confidence",
};

const ROLLOUT_KIND = { progressing: "warn", promoted: "ok", rolled_back: "bad", aborted: "bad" };

function readyBadge(ready) {
  return ready ? badge("ready", "ok") : badge("loading", "warn");
}

function aliasBadges(model, aliasesByModel) {
  const aliases = aliasesByModel.get(model.name) || {};
  const here = Object.entries(aliases)
    .filter(([, v]) => model.registry_version !== null && v === model.registry_version)
    .map(([alias]) => badge(`@${alias}`, "alias"));
  return here.length ? here : model.registry_version === null ? "file" : "–";
}

/** The served versions with their backend, state, aliases and counters. */
export function renderModels(container, models, stats, aliasesByModel) {
  if (!models.length) return fill(container, emptyLine("No model is loaded."));
  const byKey = new Map((stats?.models || []).map((s) => [versionKey(s), s]));
  const rows = models.map((m) => {
    const s = byKey.get(`${m.name}:${m.version}`);
    const accuracy = m.metrics?.test_accuracy;
    return [
      el("td", {}, el("strong", {}, m.name)),
      el("td", {}, m.version, m.registry_version !== null ? el("span", { class: "muted" }, ` (${version(m.registry_version)})`) : null),
      el("td", {}, aliasBadges(m, aliasesByModel)),
      el("td", {}, m.backend, el("span", { class: "muted" }, ` · ${m.threads ?? "?"} thr`)),
      el("td", {}, readyBadge(m.ready)),
      el("td", { class: "num" }, typeof accuracy === "number" ? pct(accuracy) : "–"),
      el("td", { class: "num" }, s ? String(s.requests) : "0"),
      el("td", { class: "num" }, s ? `${s.queue_depth}/${s.queue_capacity}` : "–"),
      el("td", { class: "num" }, `${num(m.load_seconds)} s`),
      el("td", { class: "mono", title: m.sha256 || "" }, (m.sha256 || "–").slice(0, 12)),
      el("td", { class: "mono" }, m.ref),
    ];
  });
  fill(
    container,
    table(["Model", "Version", "Aliases", "Backend", "State", "Test acc.", "Requests", "Queue", "Load", "sha256", "Reference"], rows, { id: "models-table" }),
  );
}

/** Every alias move of every served registry model, newest first. */
export function renderHistory(container, historyByModel, errors) {
  const events = [...historyByModel.values()].flat().sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)) || b.id - a.id);
  const notes = [...errors.entries()].map(([name, message]) => errorLine(`${name}: ${message}`));
  if (!events.length) {
    return fill(container, notes, emptyLine("No alias history: the models are served from files, or no alias has moved."));
  }
  const rows = events.map((e) => [
    el("td", { class: "mono" }, when(e.created_at)),
    e.name,
    badge(`@${e.alias}`, "alias"),
    e.kind,
    el("td", {}, `${version(e.from_version)} → ${version(e.to_version)}`),
    e.actor,
    e.reason,
  ]);
  fill(container, notes, table(["When", "Model", "Alias", "Kind", "Move", "Who", "Why"], rows, { id: "history-table" }));
}

/** The current aliases of each model (for the models table), from the audit logs. */
export function aliasesFromHistory(historyByModel) {
  return new Map([...historyByModel.entries()].map(([name, events]) => [name, currentAliases(events)]));
}

function rolloutSteps(rollout) {
  const steps = Array.isArray(rollout.steps) ? rollout.steps : [];
  return el(
    "ol",
    { class: "steps" },
    steps.map((weight, i) => {
      const state = i < rollout.step ? "done" : i === rollout.step ? "current" : "todo";
      return el("li", { class: `step step-${state}` }, `${weight}%`);
    }),
  );
}

function checkRow(check) {
  const verdict = check.passed === true ? badge("pass", "ok") : check.passed === false ? badge("fail", "bad") : badge("not enough data", "neutral");
  return [check.name, el("td", { class: "num" }, num(check.value)), el("td", { class: "num" }, num(check.threshold)), verdict, check.detail || ""];
}

/** Each rollout's state, traffic split and analysis checks; "no rollout" when there is none. */
export function renderRollouts(container, rollouts) {
  if (!rollouts.length) return fill(container, emptyLine("No rollout."));
  fill(
    container,
    rollouts.map((r) =>
      el(
        "div",
        { class: "rollout", dataset: { state: r.state } },
        el("h3", {}, r.model, " ", badge(String(r.state).replace("_", " "), ROLLOUT_KIND[r.state] || "neutral")),
        el(
          "p",
          {},
          `stable ${version(r.stable_version)} → canary ${version(r.canary_version)} · canary weight ${num(r.canary_weight)}%`,
        ),
        rolloutSteps(r),
        r.reason ? el("p", { class: "muted" }, r.reason) : null,
        Array.isArray(r.checks) && r.checks.length
          ? table(["Check", "Value", "Threshold", "Verdict", "Detail"], r.checks.map(checkRow))
          : emptyLine("No analysis window yet."),
      ),
    ),
  );
}

function detectorRow(key, d) {
  const holm = d.details?.holm_p_value;
  return [
    el("td", {}, el("span", { class: "mono" }, key), el("div", { class: "muted" }, DETECTORS[key] || d.name || "")),
    el("td", { class: "num" }, num(d.statistic)),
    el("td", { class: "num" }, num(d.p_value)),
    el("td", { class: "num" }, typeof holm === "number" ? num(holm) : "–"),
    d.drift ? badge("drift", "bad") : badge("no drift", "ok"),
  ];
}

function driftBlock(model) {
  const drift = model.drift;
  const title = el("h3", {}, `${model.name}:${model.version} `);
  if (!drift) return el("div", { class: "drift" }, title, emptyLine("No drift reference: this version is not watched."));
  const report = drift.report;
  title.append(report ? (report.drift_detected ? badge("drift detected", "bad") : badge("no drift", "ok")) : badge("not tested yet", "neutral"));
  const facts = `window ${drift.window}/${drift.window_size} requests · ${drift.evaluations} evaluation(s)` +
    (report ? ` · α ${num(report.alpha)} (${report.correction}) · reference ${report.reference_size} · tested on ${report.window_size}` : "");
  const detectors = report ? Object.entries(report.detectors || {}) : [];
  return el(
    "div",
    { class: "drift", dataset: { model: model.name, verdict: report ? String(report.drift_detected) : "none" } },
    title,
    el("p", { class: "muted" }, facts),
    drift.error ? errorLine(`last test failed: ${drift.error}`) : null,
    detectors.length ? table(["Detector", "Statistic", "p-value", "Holm p", "Verdict"], detectors.map(([k, d]) => detectorRow(k, d))) : null,
  );
}

/** The live drift verdict of every served version, per detector. */
export function renderDrift(container, models) {
  if (!models.length) return fill(container, emptyLine("No model is loaded."));
  fill(container, models.map(driftBlock));
}

/** The headline figures above the charts. */
export function renderHeadline(container, now, windowed, stats) {
  const item = (label, value, id) => el("div", { class: "figure" }, el("div", { class: "label" }, label), el("div", { class: "value", id }, value));
  fill(
    container,
    item("Throughput (now)", now ? `${now.rps.toFixed(1)} req/s` : "–", "throughput-now"),
    item("p50 / p95 (5 min)", `${ms(windowed.p50)} / ${ms(windowed.p95)}`, "latency-window"),
    item("5xx errors (5 min)", pct(windowed.errorRate, 2), "errors-window"),
    item("4xx errors (5 min)", pct(windowed.clientErrorRate, 2), "client-errors-window"),
    item("Requests (5 min)", String(windowed.requests), "requests-window"),
    item("In flight", String(stats?.inflight_requests ?? "–"), "inflight"),
    item("Cold start", stats?.cold_start_s ? `${num(stats.cold_start_s)} s` : "–", "cold-start"),
    item("Registry", stats?.registry ? (stats.registry.up ? "reachable" : `unreachable (${stats.registry.errors} errors)`) : "–", "registry"),
  );
}
