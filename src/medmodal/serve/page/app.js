// medmodal serve page: plain JavaScript, no build step. Talks to the JSON API with a bearer token.
"use strict";
const $ = (id) => document.getElementById(id);
let cards = {};

function token() { return $("token").value.trim(); }
const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, (options || {}).headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = { detail: res.statusText }; }
  if (res.status === 401) throw new Error("The token was refused (401 Unauthorized): check it, or create one with `medmodal token create NAME`.");
  if (!res.ok) throw new Error(`Error ${res.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`);
  return body;
}

async function connect() {
  sessionStorage.setItem("medmodal-token", token());
  setStatus("Connecting...");
  try {
    const list = await api("/v1/models");
    cards = {};
    $("model").innerHTML = "";
    for (const card of list.models) {
      cards[card.name] = card;
      const opt = document.createElement("option");
      opt.value = card.name; opt.textContent = `${card.name} (${card.task}: ${(card.classes || []).join(" / ")})`;
      $("model").appendChild(opt);
    }
    setStatus(`Connected: ${list.models.length} model(s).`);
    $("inputs").hidden = false;
    chooseModel();
  } catch (err) {
    $("inputs").hidden = true; $("result").hidden = true; $("card").hidden = true;
    setStatus(err.message, true);
  }
}

function dropZone(name, type) {
  const zone = document.createElement("div");
  zone.className = "drop";
  zone.innerHTML = `<label for="part-${name}">${name} (${type}): drop a file or choose one</label>`;
  const input = document.createElement("input");
  input.type = "file"; input.id = "part-" + name; input.dataset.part = name;
  zone.appendChild(input);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (e.dataTransfer.files.length) input.files = e.dataTransfer.files;
  });
  return zone;
}

function chooseModel() {
  const card = cards[$("model").value];
  const parts = $("parts");
  parts.innerHTML = "";
  for (const [name, spec] of Object.entries(card.inputs || {})) {
    if (spec.type === "text") {
      parts.insertAdjacentHTML("beforeend", `<label for="part-${name}">${name} (clinical note)</label><textarea id="part-${name}" data-part="${name}" rows="4"></textarea>`);
    } else if (spec.type === "tabular") {
      const fields = spec.fields.map((f) => `<div><label for="field-${name}-${f}">${f}</label><input type="text" id="field-${name}-${f}" data-record="${name}" data-field="${f}"></div>`).join("");
      parts.insertAdjacentHTML("beforeend", `<label>${name} (record fields; leave blank if unknown)</label><div class="fields">${fields}</div>`);
    } else {
      parts.appendChild(dropZone(name, spec.type));
    }
  }
  showCard(card);
  $("result").hidden = true;
  setPredictStatus("");
}

function formData() {
  const data = new FormData();
  const records = {};
  for (const el of document.querySelectorAll("[data-part]")) {
    if (el.type === "file") { if (el.files.length) data.append(el.dataset.part, el.files[0], el.files[0].name); }
    else if (el.value.trim()) data.append(el.dataset.part, el.value);
  }
  for (const el of document.querySelectorAll("[data-record]")) {
    const v = el.value.trim();
    if (!v) continue;
    const rec = records[el.dataset.record] = records[el.dataset.record] || {};
    rec[el.dataset.field] = v !== "" && !isNaN(Number(v)) ? Number(v) : v;
  }
  for (const [name, rec] of Object.entries(records)) data.append(name, JSON.stringify(rec));
  return data;
}

function setPredictStatus(text, error) {
  $("predict-status").textContent = text;
  $("predict-status").className = error ? "error" : "";
}

async function predict(event) {
  event.preventDefault();
  const name = $("model").value;
  setPredictStatus("Predicting...");
  try {
    const q = $("explain").checked ? "?explain=true" : "";
    const r = await api(`/v1/models/${encodeURIComponent(name)}/predict${q}`, { method: "POST", body: formData() });
    showResult(r);
    setPredictStatus("Done.");
  } catch (err) {
    $("result").hidden = true;
    setPredictStatus(err.message, true);  // next to the button, where the eye is
  }
}

function pct(p) { return p === null || p === undefined ? "n/a" : (100 * p).toFixed(1) + " %"; }

function showResult(r) {
  $("result").hidden = false;
  const calibrated = r.calibrated_probabilities;
  const primary = calibrated || r.probabilities;  // the decision uses the calibrated one
  const pred = Array.isArray(r.prediction) ? r.prediction.join(", ") || "(none)" : r.prediction;
  const decided = r.positive_class ? ` (positive class ${r.positive_class} when its ${calibrated ? "calibrated " : ""}probability > ${r.threshold})` : "";
  $("prediction").textContent = `Prediction: ${pred}` + decided;
  $("probs-primary").textContent = calibrated ? "calibrated probability" : "probability";
  $("probs-secondary").textContent = calibrated ? "raw (before calibration)" : "calibrated";
  const body = $("probs").querySelector("tbody");
  body.innerHTML = "";
  for (const [cls, p] of Object.entries(primary)) {
    const other = calibrated ? pct(r.probabilities[cls]) : "not calibrated in this checkpoint";
    body.insertAdjacentHTML("beforeend", `<tr><td>${esc(cls)}</td><td><span class="bar" style="width:${Math.round(100 * p)}px"></span>${pct(p)}</td><td class="secondary">${other}</td></tr>`);
  }
  $("set").textContent = r.prediction_set ? `Prediction set: {${r.prediction_set.join(", ")}}` : `Prediction set: ${r.conformal}.`;
  const m = r.modalities;
  const empty = (m.empty || []).length ? ` Sent but empty: ${m.empty.join(", ")}.` : "";
  $("used").textContent = `Modalities used: ${m.used.join(", ") || "none"}; missing: ${m.missing.join(", ") || "none"}.` + empty;
  showExplanation(r.explanation || {});
}

function showExplanation(ex) {
  const box = $("explanation");
  if (!ex.available) {
    box.innerHTML = `<p>Explanation: ${esc(ex.reason || "not available")}</p>`;
    return;
  }
  let html = `<p>Explanation (${esc(ex.method)} on ${esc(ex.modality)}):</p>`;
  if (ex.overlay) {
    html += `<div class="overlay"><img alt="input as the model saw it" src="data:image/png;base64,${ex.overlay.image_png}"><img class="heat" id="heat" alt="${esc(ex.method)} heat map over the input" src="data:image/png;base64,${ex.overlay.heatmap_png}" style="opacity:0.7"></div>
      <label for="opacity">heat map opacity</label><input id="opacity" type="range" min="0" max="100" value="70">`;
  } else {
    html += `<img alt="explanation" src="data:image/png;base64,${ex.png_base64}">`;
  }
  for (const other of (ex.modalities || []).slice(1)) {
    html += other.available
      ? `<p>${esc(other.method)} on ${esc(other.modality)}:</p><img alt="explanation of ${esc(other.modality)}" src="data:image/png;base64,${other.png_base64}">`
      : `<p>${esc(other.modality)}: ${esc(other.reason || "no explanation")} (methods: ${esc((other.methods || []).join(", ") || "none")})</p>`;
  }
  box.innerHTML = html;
  const slider = $("opacity");
  if (slider) slider.addEventListener("input", () => { $("heat").style.opacity = slider.value / 100; });
}

function fmt(v) { return typeof v === "number" ? v.toFixed(3) : "n/a"; }

function versionRows(versions) {
  const rows = [];
  for (const [k, v] of Object.entries(versions || {})) {
    if (v && typeof v === "object") {
      for (const [k2, v2] of Object.entries(v)) rows.push([`${k}: ${k2}`, v2]);
    } else rows.push([k, v === null ? "not recorded" : v]);
  }
  return rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td><code>${esc(v)}</code></td></tr>`).join("");
}

function showCard(card) {
  $("card").hidden = false;
  const test = (card.metrics || {}).test || {};
  const rows = Object.entries(test).map(([k, v]) => `<tr><td>${esc(k)}${v.class ? ` (class ${esc(v.class)})` : ""}</td><td>${fmt(v.value)}</td><td>${v.ci95 && v.ci95[0] !== null ? `[${fmt(v.ci95[0])}, ${fmt(v.ci95[1])}]` : ""}</td></tr>`).join("");
  const perClass = Object.entries(card.per_class || {}).map(([c, v]) => `<tr${v.predicted === 0 ? ' class="warning"' : ""}><td>${esc(c)}</td><td>${fmt(v.recall)}</td><td>${fmt(v.precision)}</td><td>${v.support ?? ""}</td><td>${v.predicted ?? ""}${v.predicted === 0 ? " (never predicted)" : ""}</td></tr>`).join("");
  const data = card.training_data || {};
  $("card-body").innerHTML = `<dl>
    <dt>Intended use</dt><dd>${esc(card.intended_use)}</dd>
    <dt>Training data</dt><dd>${esc(data.dataset || data.manifest || "not recorded")}; data hash <code>${esc(data.data_hash || "not recorded")}</code></dd>
    <dt>Test metrics (95% CI)</dt><dd><table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>${rows}</table></dd>
    <dt>Per class (test)</dt><dd><table><tr><th>class</th><th>recall</th><th>precision</th><th>samples</th><th>predicted</th></tr>${perClass}</table></dd>
    <dt>Known limits</dt><dd><ul>${(card.known_limits || []).map((l) => `<li${l.includes("never predicted") ? ' class="warning"' : ""}>${esc(l)}</li>`).join("")}</ul></dd>
    <dt>Versions</dt><dd><table id="versions"><tr><th>component</th><th>version</th></tr>${versionRows(card.versions)}</table></dd></dl>`;
}

$("connect").addEventListener("click", connect);
$("model").addEventListener("change", chooseModel);
$("form").addEventListener("submit", predict);
$("token").value = sessionStorage.getItem("medmodal-token") || "";
