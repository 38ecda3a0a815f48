// The upload panel: one image (file input or drag and drop) → top-5 predictions and the
// Grad-CAM overlay. It only calls the read-only predict and explain routes.

import { api, ApiError } from "./api.js";
import { byId, el, emptyLine, errorLine, fill } from "./dom.js";
import { pct } from "./format.js";

let overlayUrl = null;
let previewUrl = null;
let servedModels = []; // the latest /v1/models list

function setUrl(img, kind, blob) {
  if (kind === "overlay" && overlayUrl) URL.revokeObjectURL(overlayUrl);
  if (kind === "preview" && previewUrl) URL.revokeObjectURL(previewUrl);
  const url = URL.createObjectURL(blob);
  if (kind === "overlay") overlayUrl = url;
  else previewUrl = url;
  img.src = url;
}

function form(file) {
  const body = new FormData();
  body.append("file", file, file.name || "image");
  return body;
}

function renderPredictions(container, answer) {
  const rows = (answer.predictions || []).map((p) =>
    el(
      "li",
      { class: "prediction", dataset: { index: p.index } },
      el("span", { class: "plabel" }, p.label),
      el("span", { class: "pbar" }, el("span", { class: "pfill", style: `width:${Math.max(0, Math.min(1, p.probability)) * 100}%` })),
      el("span", { class: "num" }, pct(p.probability)),
    ),
  );
  fill(
    container,
    ...oodLine(answer.ood),
    el("ol", { class: "predictions", id: "predictions" }, rows),
    el("p", { class: "muted" }, `${answer.model}:${answer.version} · ${answer.latency_ms} ms · request ${answer.request_id}`),
  );
}

// The out-of-distribution flag of a /v1 answer: a warning above the predictions when the input
// is unlike the model's held-out data (score > 1, the calibrated threshold), a quiet line when
// not, nothing for a version without a detector.
function oodLine(ood) {
  if (!ood) return [];
  const score = Number(ood.score).toFixed(2);
  if (ood.flagged) {
    return [el("p", { class: "ood-flag", id: "ood", dataset: { flagged: "true" } },
      `Out of distribution (score ${score} > 1, ${ood.method}): this input is unlike the images the model was checked on; do not trust the predictions below.`)];
  }
  return [el("p", { class: "muted", id: "ood", dataset: { flagged: "false" } },
    `In distribution: OOD score ${score} (flagged above 1, ${ood.method})`)];
}

async function explain(model, file, figure) {
  const img = figure.querySelector("img");
  const caption = figure.querySelector("figcaption");
  const versions = servedModels.filter((m) => m.name === model);
  if (versions.length && !versions.some((m) => m.explainable)) {
    // Saves a request the server would refuse with 400 (and the console error it logs).
    img.hidden = true;
    img.removeAttribute("src");
    caption.replaceChildren(errorLine(`No explanation: ${model} is an ONNX model without torch weights; Grad-CAM needs the weights version it was exported from.`));
    return;
  }
  caption.textContent = "Computing Grad-CAM…";
  try {
    const blob = await api(`v1/models/${encodeURIComponent(model)}/explain`, { method: "POST", body: form(file) }, "blob");
    setUrl(img, "overlay", blob);
    img.hidden = false;
    caption.textContent = "Grad-CAM of the top class";
  } catch (err) {
    img.hidden = true;
    img.removeAttribute("src");
    caption.replaceChildren(errorLine(`No explanation: ${err.message}`));
  }
}

async function classify(file) {
  const model = byId("upload-model").value;
  const results = byId("upload-results");
  const preview = byId("upload-preview");
  if (!model) return fill(results, errorLine("No model is loaded to classify with."));
  if (file.type && !file.type.startsWith("image/")) {
    return fill(results, errorLine(`${file.name} is not an image (${file.type}).`));
  }
  setUrl(preview.querySelector("img"), "preview", file);
  preview.querySelector("img").hidden = false;
  preview.querySelector("figcaption").textContent = file.name || "uploaded image";
  fill(results, emptyLine("Classifying…"));
  try {
    const answer = await api(`v1/models/${encodeURIComponent(model)}/predict?k=5`, { method: "POST", body: form(file) });
    renderPredictions(results, answer);
  } catch (err) {
    const message = err instanceof ApiError ? err.message : `request failed: ${err.message}`;
    fill(results, errorLine(`Prediction failed: ${message}`));
    return;
  }
  await explain(model, file, byId("upload-overlay"));
}

/** The models the panel can send to (kept in sync with /v1/models). */
export function updateModelChoices(models) {
  servedModels = models;
  const select = byId("upload-model");
  const names = [...new Set(models.map((m) => m.name))];
  const current = [...select.options].map((o) => o.value);
  if (names.join("\n") === current.join("\n")) return;
  const chosen = select.value;
  fill(select, names.map((n) => el("option", { value: n, selected: n === chosen }, n)));
}

/** Wire the file input and the drop zone. */
export function setupUpload() {
  const input = byId("upload-file");
  const zone = byId("upload-zone");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) classify(input.files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) classify(file);
  });
}
