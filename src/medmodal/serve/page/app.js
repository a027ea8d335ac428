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

async function predict(event) {
  event.preventDefault();
  const name = $("model").value;
  setStatus("Predicting...");
  try {
    const q = $("explain").checked ? "?explain=true" : "";
    const r = await api(`/v1/models/${encodeURIComponent(name)}/predict${q}`, { method: "POST", body: formData() });
    showResult(r);
    setStatus("Done.");
  } catch (err) {
    $("result").hidden = true;
    setStatus(err.message, true);
  }
}

function pct(p) { return p === null || p === undefined ? "n/a" : (100 * p).toFixed(1) + " %"; }

function showResult(r) {
  $("result").hidden = false;
  const pred = Array.isArray(r.prediction) ? r.prediction.join(", ") || "(none)" : r.prediction;
  $("prediction").textContent = `Prediction: ${pred}` + (r.positive_class ? ` (positive class ${r.positive_class} when p > ${r.threshold})` : "");
  const body = $("probs").querySelector("tbody");
  body.innerHTML = "";
  for (const [cls, p] of Object.entries(r.probabilities)) {
    const cal = r.calibrated_probabilities ? r.calibrated_probabilities[cls] : null;
    body.insertAdjacentHTML("beforeend", `<tr><td>${esc(cls)}</td><td><span class="bar" style="width:${Math.round(100 * p)}px"></span>${pct(p)}</td><td>${cal === null ? "not calibrated" : pct(cal)}</td></tr>`);
  }
  $("set").textContent = r.prediction_set ? `Prediction set: {${r.prediction_set.join(", ")}}` : `Prediction set: ${r.conformal}.`;
  $("used").textContent = `Modalities used: ${r.modalities.used.join(", ") || "none"}; missing: ${r.modalities.missing.join(", ") || "none"}.`;
  const ex = r.explanation || {};
  $("explanation").innerHTML = ex.available
    ? `<p>Explanation (${esc(ex.method)} on ${esc(ex.modality)}):</p><img alt="explanation overlay" src="data:image/png;base64,${ex.png_base64}">`
    : `<p>Explanation: ${esc(ex.reason || "not available")}</p>`;
}

function showCard(card) {
  $("card").hidden = false;
  const test = (card.metrics || {}).test || {};
  const rows = Object.entries(test).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v.value.toFixed(3)}</td><td>${v.ci95 && v.ci95[0] !== null ? `[${v.ci95[0].toFixed(3)}, ${v.ci95[1].toFixed(3)}]` : ""}</td></tr>`).join("");
  const data = card.training_data || {};
  $("card-body").innerHTML = `<dl>
    <dt>Intended use</dt><dd>${esc(card.intended_use)}</dd>
    <dt>Training data</dt><dd>${esc(data.dataset || data.manifest || "not recorded")}; data hash <code>${esc(data.data_hash || "not recorded")}</code></dd>
    <dt>Test metrics (95% CI)</dt><dd><table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>${rows}</table></dd>
    <dt>Known limits</dt><dd><ul>${(card.known_limits || []).map((l) => `<li>${esc(l)}</li>`).join("")}</ul></dd>
    <dt>Versions</dt><dd><code>${esc(JSON.stringify(card.versions))}</code></dd></dl>`;
}

$("connect").addEventListener("click", connect);
$("model").addEventListener("change", chooseModel);
$("form").addEventListener("submit", predict);
$("token").value = sessionStorage.getItem("medmodal-token") || "";
