// medmodal serve page, PACS part: pick a study from the configured PACS (QIDO-RS search by
// accession number or date) instead of a file. Uses app.js's $, api, esc, cards and showResult.
"use strict";

async function pacsSetup() {
  let info;
  try { info = await api("/v1/pacs"); } catch (e) { return; }  // a wrong token: app.js says so
  let box = $("pacs");
  if (!info.configured) { if (box) box.hidden = true; return; }
  if (!box) {
    box = document.createElement("fieldset");
    box.id = "pacs";
    box.innerHTML = `<legend>Or a study from the PACS</legend>
      <label for="pacs-accession">Accession number</label><input id="pacs-accession" type="text">
      <label for="pacs-date">Study date (YYYYMMDD or YYYYMMDD-YYYYMMDD)</label><input id="pacs-date" type="text">
      <button id="pacs-search" type="button">Search the PACS</button>
      <label class="check"><input id="pacs-store" type="checkbox" checked> store the result in the PACS (DICOM SR)</label>
      <table id="pacs-studies" hidden><thead><tr><th>date</th><th>accession</th><th>modalities</th><th>description</th><th>images</th><th></th></tr></thead><tbody></tbody></table>
      <p id="pacs-summary"></p>`;
    $("inputs").insertBefore(box, $("form"));
    $("pacs-search").addEventListener("click", pacsSearch);
  }
  box.hidden = false;
}

async function pacsSearch() {
  const q = new URLSearchParams();
  const acc = $("pacs-accession").value.trim(), date = $("pacs-date").value.trim();
  if (acc) q.set("accession", acc);
  if (date) q.set("date", date);
  setStatus("Searching the PACS...");
  try {
    const r = await api("/v1/pacs/studies?" + q.toString());
    const body = $("pacs-studies").querySelector("tbody");
    body.innerHTML = "";
    for (const s of r.studies) {
      body.insertAdjacentHTML("beforeend", `<tr><td>${esc(s.StudyDate)}</td><td>${esc(s.AccessionNumber)}</td><td>${esc((s.ModalitiesInStudy || []).join(", "))}</td><td>${esc(s.StudyDescription)}</td><td>${esc(s.NumberOfStudyRelatedInstances ?? "")}</td><td><button type="button" class="pacs-predict" data-study="${esc(s.StudyInstanceUID)}">Predict this study</button></td></tr>`);
    }
    for (const b of body.querySelectorAll(".pacs-predict")) b.addEventListener("click", () => pacsPredict(b.dataset.study));
    $("pacs-studies").hidden = r.studies.length === 0;
    setStatus(`${r.studies.length} study(ies) found.`);
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function pacsPredict(study) {
  const name = $("model").value, card = cards[name];
  setStatus("Fetching the study and predicting...");
  try {
    const store = $("pacs-store").checked ? "true" : "false";
    const r = await api(`/v1/models/${encodeURIComponent(name)}/pacs/${encodeURIComponent(study)}?store_sr=${store}`, { method: "POST" });
    const first = r.instances[0];
    const others = Object.keys(card.inputs || {}).filter((m) => m !== r.modality);
    showResult(Object.assign({}, first, {
      positive_class: card.positive_class, threshold: card.threshold,
      conformal: first.prediction_set ? "fitted" : "none in this checkpoint",
      modalities: { used: [r.modality], missing: others },
      explanation: { available: false, reason: "not computed for PACS studies" },
    }));
    const lines = r.instances.map((x, i) => `image ${i + 1}: ${esc(Array.isArray(x.prediction) ? x.prediction.join(", ") : x.prediction)}`);
    $("pacs-summary").innerHTML = `Study: ${r.instances.length} image(s) predicted (${lines.join("; ")}), ${r.skipped.length} skipped. ` +
      (r.sr.stored ? `Result stored in the PACS as DICOM SR ${esc(r.sr.sop_instance_uid)}.` : "Result not stored in the PACS.");
    setStatus("Done.");
  } catch (err) {
    $("result").hidden = true;
    setStatus(err.message, true);
  }
}

$("connect").addEventListener("click", pacsSetup);
