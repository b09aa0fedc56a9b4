// The page on psyattr serve's REST port: frame a photo per model (server side), explain it, draw the result.
"use strict";

const COLUMNS = ["a", "b"];
const PERCENTILE = 99.5; // the colour scale: this percentile of |relevance| over both heatmaps, as psyattr's figures
let models = [];
let photo = null; // the chosen file's bytes
let run = 0; // each new photo or choice starts a new run; answers of older runs are dropped
// What the last run gave, per column: read by people through the page and by tests through this object.
window.psyattr = { results: {}, scale: null, ready: false };

const $ = (id) => document.getElementById(id);

async function answer(response) {
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new Error(`HTTP ${response.status}: ${text.slice(0, 200)}`);
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function option(select, value, label) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label;
  select.appendChild(element);
}

function fillTargets(column) {
  const select = $(`target-${column}`);
  const model = models.find((m) => m.name === $(`model-${column}`).value);
  select.innerHTML = "";
  if (!model) return;
  option(select, "", "its top output");
  for (const name of model.outputs) option(select, name, name);
  if (model.kind === "regressor") select.value = model.outputs[0];
}

async function loadModels() {
  const body = await answer(await fetch("/psyattr/models"));
  models = body.models.filter((m) => m.photos && m.framing);
  if (!models.length) {
    $("status").textContent = "No served model takes photos (exports from psyattr with a framing do).";
    return;
  }
  COLUMNS.forEach((column, i) => {
    const select = $(`model-${column}`);
    if (column === "b") option(select, "", "(none)");
    for (const m of models) option(select, m.name, `${m.name} (v${m.version}, ${m.framing} framing)`);
    select.value = column === "a" ? models[0].name : (models[1] ? models[1].name : "");
    select.addEventListener("change", () => { fillTargets(column); explainAll(); });
    $(`target-${column}`).addEventListener("change", explainAll);
    fillTargets(column);
  });
  $("status").textContent = `Serving ${models.map((m) => m.name).join(", ")}. Choose a photo of a face.`;
  window.psyattr.ready = true;
}

async function explainColumn(column, ticket) {
  const name = $(`model-${column}`).value;
  const status = $(`status-${column}`);
  status.className = "column-status";
  const table = $(`scores-${column}`).querySelector("tbody");
  table.innerHTML = "";
  $(`framed-${column}`).hidden = true;
  clearCanvas($(`heatmap-${column}`));
  delete window.psyattr.results[column];
  if (!name || !photo) { status.textContent = ""; return null; }
  const model = models.find((m) => m.name === name);
  status.textContent = `Framing the face for ${name}…`;
  const framed = await answer(await fetch(`/psyattr/frame?model=${encodeURIComponent(name)}`,
    { method: "POST", body: photo, headers: { "Content-Type": "application/octet-stream" } }));
  if (ticket !== run) return null;
  status.textContent = `Explaining with ${name}…`;
  const target = $(`target-${column}`).value;
  const predicted = await answer(await fetch(`/v1/models/${encodeURIComponent(name)}:predict`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ signature_name: "explain_image",
      inputs: { photo: [{ b64: framed.framed }], target: [target] } }),
  }));
  if (ticket !== run) return null;
  const outputs = predicted.outputs;
  const result = { model: name, framing: framed.framing, notes: framed.notes, target: outputs.target[0],
    target_score: outputs.target_score[0], heatmap: outputs.heatmap[0], outputs: {} };
  for (const [key, value] of Object.entries(outputs)) {
    if (!["heatmap", "target", "target_score"].includes(key)) result.outputs[key] = value[0];
  }
  const image = $(`framed-${column}`);
  // The model sees the centre 227 x 227 of the 256 px frame: show that crop, so the heatmap lies over it.
  image.src = await cropped(`data:image/png;base64,${framed.framed}`, framed.size, framed.crop);
  image.hidden = false;
  drawScores(table, model, result);
  status.textContent = `${name}: explained ${result.target} (${framed.framing} framing)` +
    (framed.notes.length ? `; ${framed.notes.join("; ")}` : "");
  return result;
}

function cropped(source, size, crop) {
  return new Promise((resolve, reject) => {
    const picture = new Image();
    picture.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = crop;
      const offset = Math.floor((size - crop) / 2);
      canvas.getContext("2d").drawImage(picture, offset, offset, crop, crop, 0, 0, crop, crop);
      resolve(canvas.toDataURL("image/png"));
    };
    picture.onerror = () => reject(new Error("the framed face could not be shown"));
    picture.src = source;
  });
}

function drawScores(table, model, result) {
  const keys = model.output_keys || {};
  model.outputs.forEach((name, i) => {
    const row = table.insertRow();
    row.dataset.output = name;
    if (name === result.target) row.className = "explained";
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    cell.className = "value";
    if (keys.rating) {
      const value = result.outputs[keys.rating[i]];
      const [low, high] = (model.scales || {})[name] || [0, 1];
      cell.dataset.key = keys.rating[i];
      cell.dataset.value = value;
      cell.textContent = `${value.toFixed(2)} on ${low}–${high}`;
      bar(row, (value - low) / (high - low));
    } else if (keys.prob) {
      const value = result.outputs[keys.prob[i]];
      cell.dataset.key = keys.prob[i];
      cell.dataset.value = value;
      cell.textContent = `${(100 * value).toFixed(1)} %`;
      bar(row, value);
    }
  });
}

function bar(row, share) {
  const span = document.createElement("span");
  span.className = "bar";
  span.style.width = `${Math.max(0, Math.min(1, share)) * 6}rem`;
  row.insertCell().appendChild(span);
}

function clearCanvas(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function symmetricScale(heatmaps) {
  const values = [];
  for (const heat of heatmaps) for (const row of heat) for (const v of row) values.push(Math.abs(v));
  if (!values.length) return 1;
  values.sort((x, y) => x - y);
  // numpy's default percentile: linear between the two nearest ranks.
  const rank = (PERCENTILE / 100) * (values.length - 1);
  const low = Math.floor(rank);
  const scale = values[low] + (values[Math.min(low + 1, values.length - 1)] - values[low]) * (rank - low);
  return scale > 0 ? scale : (values[values.length - 1] || 1);
}

// matplotlib's "bwr": blue (negative), white (zero), red (positive).
function colour(v) {
  const t = Math.max(0, Math.min(1, v / 2 + 0.5));
  return t < 0.5 ? [Math.round(510 * t), Math.round(510 * t), 255] : [255, Math.round(510 * (1 - t)), Math.round(510 * (1 - t))];
}

function drawHeatmap(canvas, heat, scale) {
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(heat[0].length, heat.length);
  heat.forEach((row, y) => row.forEach((v, x) => {
    const [r, g, b] = colour(v / scale);
    const i = 4 * (y * row.length + x);
    pixels.data.set([r, g, b, 255], i);
  }));
  context.putImageData(pixels, 0, 0);
}

function drawColorbar() {
  const canvas = $("colorbar");
  const context = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b] = colour((2 * x) / (canvas.width - 1) - 1);
    context.fillStyle = `rgb(${r},${g},${b})`;
    context.fillRect(x, 0, 1, canvas.height);
  }
}

async function explainAll() {
  const ticket = ++run;
  if (!photo) return;
  window.psyattr.results = {};
  window.psyattr.scale = null;
  $("status").textContent = "Working…";
  const settled = await Promise.allSettled(COLUMNS.map((column) => explainColumn(column, ticket)));
  if (ticket !== run) return;
  const done = {};
  settled.forEach((outcome, i) => {
    const column = COLUMNS[i];
    if (outcome.status === "rejected") {
      const status = $(`status-${column}`);
      status.textContent = outcome.reason.message;
      status.className = "column-status error";
    } else if (outcome.value) {
      done[column] = outcome.value;
    }
  });
  const heatmaps = Object.values(done).map((r) => r.heatmap);
  if (heatmaps.length) {
    const scale = symmetricScale(heatmaps);
    for (const [column, result] of Object.entries(done)) {
      drawHeatmap($(`heatmap-${column}`), result.heatmap, scale);
      $(`caption-${column}`).textContent = `relevance for ${result.target} (${result.target_score.toFixed(3)})`;
    }
    $("scale").textContent = `Shared colour scale: full colour at ±${scale.toPrecision(3)} relevance per pixel.`;
    window.psyattr.scale = scale;
  }
  window.psyattr.results = done;
  const failed = COLUMNS.filter((c) => settled[COLUMNS.indexOf(c)].status === "rejected").length;
  $("status").textContent = failed ? `Done, ${failed} model(s) could not explain this photo: see below.` : "Done.";
  document.body.dataset.run = String(ticket);
}

function choose(file) {
  if (!file) return;
  file.arrayBuffer().then((buffer) => {
    photo = new Uint8Array(buffer);
    const original = $("original");
    original.src = URL.createObjectURL(file);
    original.hidden = false;
    explainAll();
  });
}

$("photo").addEventListener("change", (event) => choose(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
function addColumns() {
  const template = $("column");
  for (const column of COLUMNS) {
    const part = template.content.cloneNode(true);
    part.querySelector("article").dataset.column = column;
    for (const element of part.querySelectorAll("[id]")) element.id = element.id.replace("COLUMN", column);
    $("columns").appendChild(part);
  }
}

addColumns();
drawColorbar();
loadModels().catch((err) => { $("status").textContent = `Cannot list the served models: ${err.message}`; });
