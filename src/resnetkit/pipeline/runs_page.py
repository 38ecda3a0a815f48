"""The page ``resnetkit pipeline serve`` answers at ``/``: its runs, refreshed from the API.

One self-contained HTML document (no external asset, no network beyond this service): a
script fetches ``v1/pipelines`` every :data:`REFRESH_S` seconds and draws the runs, newest
first, with the DOM's ``textContent`` (never HTML built from run data, so a label an alert
carries cannot inject markup). A run that wrote a ``pipeline.json`` links to its content at
``v1/pipelines/<id>/pipeline.json``. Paths are relative, so the page works behind a prefix.

:data:`CONTENT_SECURITY_POLICY` allows exactly the inline script and style below (by their
hashes) and requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["CONTENT_SECURITY_POLICY", "REFRESH_S", "RUNS_PAGE"]

REFRESH_S = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #f7f8fa; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
#summary { margin: .4rem 0 1rem; }
#summary span { margin-right: 1rem; }
#status { color: #5b6475; font-size: .85rem; }
#status.down { color: #b3261e; font-weight: 600; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e6ec;
  vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 .45rem; border-radius: .6rem; font-weight: 600; }
.good { background: #d8f3dc; color: #1b5e20; }
.bad { background: #fde2e1; color: #8c1d18; }
.wait { background: #fff1c2; color: #6b4f00; }
.none { background: #e9ebf0; color: #454c5a; }
.error { color: #8c1d18; font-size: .85rem; }
.empty { color: #5b6475; padding: 1rem; }
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const TONE = {promoted: "good", blessed: "good", not_blessed: "bad", rolled_back: "bad",
  aborted: "bad", timeout: "bad", failed: "bad", not_enough_data: "none"};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function when(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  return isNaN(t) ? iso : t.toLocaleString();
}
function ago(iso) {
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (!isFinite(s)) return "";
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function duration(run) {
  if (!run.finished) return "running";
  const s = (new Date(run.finished) - new Date(run.started)) / 1000;
  return isFinite(s) ? (s < 120 ? s.toFixed(0) + " s" : (s / 60).toFixed(1) + " min") : "";
}
function badge(outcome) {
  return el("span", outcome || "running", "badge " + (TONE[outcome] || "wait"));
}
function trigger(run) {
  const t = run.trigger || {};
  const labels = (t.labels && t.labels[0]) || {};
  const parts = [t.alertname || "alert"];
  if (labels.model) parts.push(labels.model + (labels.version ? " v" + labels.version : ""));
  return parts.join(" · ");
}
function blessedText(run) {
  if (run.blessed === true) return "yes";
  if (run.blessed === false) return "no";
  return "";
}
function row(run) {
  const tr = el("tr");
  tr.dataset.run = run.id;
  const started = el("td", when(run.started));
  started.title = run.id;
  tr.append(started, el("td", trigger(run)));
  const outcome = el("td");
  outcome.append(badge(run.outcome));
  if (run.error) outcome.append(el("div", run.error, "error"));
  tr.append(outcome, el("td", run.candidate || ""), el("td", run.baseline || ""),
    el("td", blessedText(run)));
  const labels = run.labels ? run.labels.new + " / " + run.labels.total : "";
  const samples = (run.feedback && run.feedback.samples) || {};
  const exported = samples.train !== undefined ? samples.train + " / " + samples.holdout : "";
  tr.append(el("td", labels, "num"), el("td", exported, "num"), el("td", duration(run), "num"));
  const link = el("td");
  if (run.pipeline_json) {
    const a = el("a", "pipeline.json");
    a.href = "v1/pipelines/" + encodeURIComponent(run.id) + "/pipeline.json";
    link.append(a);
  }
  tr.append(link);
  return tr;
}
function summary(runs) {
  const box = document.getElementById("summary");
  box.replaceChildren();
  const last = runs.find((r) => r.finished);
  if (last) {
    const span = el("span", "last run: ");
    span.append(badge(last.outcome), " " + ago(last.finished));
    box.append(span);
  }
  const counts = {};
  for (const r of runs) {
    const key = r.outcome || "running";
    counts[key] = (counts[key] || 0) + 1;
  }
  for (const [outcome, n] of Object.entries(counts)) box.append(el("span", outcome + ": " + n));
}
async function refresh() {
  const status = document.getElementById("status");
  try {
    const answer = await fetch("v1/pipelines", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    const runs = (await answer.json()).runs;
    const body = document.getElementById("runs");
    body.replaceChildren(...runs.map(row));
    document.getElementById("empty").hidden = runs.length > 0;
    summary(runs);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "";
  } catch (err) {
    status.textContent = "cannot read v1/pipelines: " + err.message;
    status.className = "down";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
""".replace("__REFRESH_MS__", str(REFRESH_S * 1000))

_COLUMNS = (
    "Started", "Trigger", "Outcome", "Candidate", "Baseline", "Blessed", "Labels new / total",
    "Exported train / holdout", "Took", "Details",
)  # fmt: skip

RUNS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>resnetkit · retraining pipeline runs</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Retraining pipeline runs</h1>
<div id="summary"></div>
<table>
<thead><tr>{"".join(f"<th>{c}</th>" for c in _COLUMNS)}</tr></thead>
<tbody id="runs"></tbody>
</table>
<p id="empty" class="empty" hidden>No run yet: one starts when Alertmanager sends a firing
ResNetKitDriftDetected.</p>
<p id="status">loading…</p>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
