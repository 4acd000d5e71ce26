// biomx serve: the web page. Plain JavaScript, no build step, nothing fetched from outside.
//
// Stable element ids (browser tests rely on them; keep them):
//   #model        <select> of the served models (GET /models); its value is the model name
//   #input-help   what the chosen model takes
//   #drop         the drag-and-drop zone (drop files on it)
//   #file         <input type=file multiple> (the same files as a drop)
//   #chosen       the names of the chosen files
//   #text         <textarea> for pasted inputs (molecules, sequences, CSV rows)
//   #suffix       <select>: what the pasted text is (.smi, .fa, .csv, .tsv, .txt)
//   #explain      checkbox: ask for explanation images
//   #submit       the Predict button (disabled while a request runs)
//   #error        the one-line error of the last request (hidden when none)
//   #result       the answer (hidden until the first answer); data-state="done" once filled
//   #label        the first input's label (or its first prediction column); empty until an answer
//   #uncertainty  the first input's uncertainty (an ensemble's std), or "–" for a single model
//   #rows         a table: one row per input, one column per prediction column
//   #explanation  <img> of the first input's explanation (inside #explanation-box, hidden when none)
//   #card         the model card of the chosen model (empty until it has loaded; data-model = its name)
"use strict";

const $ = (id) => document.getElementById(id);
let chosenFiles = [];

function showError(line) {
  $("error").textContent = line;
  $("error").hidden = !line;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function fmt(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (Array.isArray(value)) return value.map(fmt).join(", ");
  if (value && typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${fmt(v)}`).join("; ");
  return value === null || value === undefined ? "–" : String(value);
}

async function loadModels() {
  try {
    const { models } = await getJSON("/models");
    const select = $("model");
    select.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.modality}, ${m.kind || m.task})${m.ready ? "" : " – loading"}`;
      option.dataset.input = m.input || "";
      return option;
    }));
    await modelChanged();
  } catch (err) {
    showError(`cannot list the models: ${err.message}`);
  }
}

async function modelChanged() {
  const option = $("model").selectedOptions[0];
  $("input-help").textContent = option ? option.dataset.input : "";
  if (option) await loadCard(option.value);
}

async function loadCard(name) {
  const body = $("card");
  try {
    const card = await getJSON(`/models/${encodeURIComponent(name)}/card`);
    body.replaceChildren(cardList(card));
    body.dataset.model = name;
  } catch (err) {
    body.textContent = `no model card: ${err.message}`;
  }
}

function cardList(card) {
  const list = document.createElement("dl");
  const add = (term, value) => {
    if (value === undefined || value === null || value === "") return;
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    list.append(dt, dd);
  };
  add("run", card.name);
  add("data", card.data && `${card.data.source || ""}, ${card.data.n ?? "?"} samples ${fmt(card.data.split_sizes)}`);
  add("model", card.model && `${card.model.name} ${fmt(card.model.args)}`);
  add("task", card.task && `${card.task.name} (${card.task.kind || ""}) ${fmt(card.task.classes)}`);
  add("input", card.input && card.input.description);
  const test = card.test || {};
  for (const name of test.headline || Object.keys(test.metrics || {})) {
    const m = (test.metrics || {})[name];
    if (!m) continue;
    const ci = m.ci_low === null || m.ci_low === undefined ? "" : ` [${fmt(m.ci_low)}, ${fmt(m.ci_high)}]`;
    add(`test ${name}`, `${fmt(m.value)}${ci} (n=${test.n})`);
  }
  add("uncertainty", card.uncertainty && fmt(card.uncertainty));
  add("intended use", card.intended_use);
  add("limitations", card.limitations);
  return list;
}

function setFiles(files) {
  chosenFiles = Array.from(files);
  $("chosen").textContent = chosenFiles.map((f) => f.name).join(", ");
}

async function predict() {
  const name = $("model").value;
  const form = new FormData();
  for (const file of chosenFiles) form.append("files", file, file.name);
  const text = $("text").value;
  if (text.trim()) {
    form.append("text", text);
    form.append("suffix", $("suffix").value);
  }
  form.append("explain", $("explain").checked ? "1" : "0");
  if (!chosenFiles.length && !text.trim()) {
    showError("choose or drop a file, or paste text");
    return;
  }
  showError("");
  $("submit").disabled = true;
  try {
    const response = await fetch(`/models/${encodeURIComponent(name)}/predict`, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(body.error || `${response.status}`);
    showResult(body.results);
  } catch (err) {
    showError(err.message);
  } finally {
    $("submit").disabled = false;
  }
}

function showResult(results) {
  const first = results[0] || {};
  const columns = Object.keys(first).filter((k) => k !== "explanation_png");
  $("label").textContent = fmt(first.label ?? first[columns[1]]);
  $("uncertainty").textContent = fmt(first.uncertainty);
  const head = document.createElement("tr");
  head.append(...columns.map((c) => Object.assign(document.createElement("th"), { textContent: c })));
  const rows = results.map((r) => {
    const tr = document.createElement("tr");
    tr.append(...columns.map((c) => Object.assign(document.createElement("td"), { textContent: fmt(r[c]) })));
    return tr;
  });
  $("rows").replaceChildren(head, ...rows);
  const image = first.explanation_png;
  $("explanation-box").hidden = !image;
  $("explanation").src = image ? `data:image/png;base64,${image}` : "";
  $("result").hidden = false;
  $("result").dataset.state = "done";
}

function wireDrop() {
  const drop = $("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setFiles(e.dataTransfer.files));
  $("file").addEventListener("change", (e) => setFiles(e.target.files));
}

document.addEventListener("DOMContentLoaded", () => {
  wireDrop();
  $("model").addEventListener("change", modelChanged);
  $("submit").addEventListener("click", predict);
  loadModels();
});
