// The page to try a served model: choose or drop an image, type the text, POST /predict, show the result.
// Plain JS, no build step; talks only to the server it came from.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, file: null, url: null, attention: null };

function show(el, visible) { el.hidden = !visible; }

function setError(message) {
  $("error").textContent = message || "";
  show($("error"), Boolean(message));
}

function describeError(status, body) {
  if (body && typeof body.detail === "string") return `${status}: ${body.detail}`;
  if (body && Array.isArray(body.detail)) {
    return `${status}: ` + body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("\n");
  }
  return `${status}: the server answered with an error`;
}

// whether every item needs an image (a model trained with missing-image handling also predicts from the text alone)
function imageRequired(info) {
  return typeof info.image_required === "boolean" ? info.image_required : info.inputs.includes("image");
}

function ready() {
  const info = state.info;
  const needsImage = !info || imageRequired(info);
  $("predict").disabled = !info || (needsImage && !state.file);
}

async function loadInfo() {
  try {
    const response = await fetch("/info");
    if (!response.ok) throw new Error(`GET /info: ${response.status}`);
    const info = await response.json();
    state.info = info;
    const encoders = Object.values(info.encoders).filter(Boolean).join(" + ");
    $("model-info").textContent =
      `Head ${info.head} (${encoders}) · classes: ${info.classes.join(", ")} · backend ${info.backend} · v${info.version}`;
    show($("image-field"), info.inputs.includes("image"));
    show($("text-field"), info.inputs.includes("text"));
    show($("image-optional"), info.inputs.includes("image") && !imageRequired(info));
  } catch (err) {
    $("model-info").textContent = "Could not load model information.";
    setError(String(err));
  }
  ready();
}

function chooseFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setError(`"${file.name}" is not an image (${file.type})`);
    return;
  }
  setError("");
  state.file = file;
  state.attention = null;
  fillWords(null);
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(file);
  $("preview").src = state.url;
  $("file-name").textContent = `${file.name} · ${(file.size / 1024).toFixed(1)} KiB`;
  show($("stage"), true);
  show($("drop-hint"), false);
  clearHeatmap();
  ready();
}

function clearHeatmap() {
  const canvas = $("heatmap");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

// weight in [0, 1] -> RGBA, dark blue (low) to yellow (high), more opaque where higher
function colour(v) {
  const r = Math.round(255 * Math.min(1, 0.2 + 1.6 * v));
  const g = Math.round(255 * Math.max(0, Math.min(1, 2 * v - 0.6)));
  const b = Math.round(255 * Math.max(0, 0.7 - 1.4 * v));
  return [r, g, b, Math.round(255 * (0.12 + 0.6 * v))];
}

// the part of a w × h picture the image encoder reads, where the region grid lies: all of it, or its centre square
// (`image_crop` of /info: a share of the short side)
function gridBox(w, h, crop) {
  if (typeof crop !== "number") return [0, 0, w, h];
  const side = Math.min(w, h) * crop;
  return [(w - side) / 2, (h - side) / 2, side, side];
}

// the map shown: the mean over the text's tokens, or the chosen word's own
function shownWeights() {
  const att = state.attention;
  const k = $("word").value;
  if (att && att.words && k !== "" && att.words[Number(k)]) return att.words[Number(k)].weights;
  return att ? att.weights : null;
}

function drawHeatmap() {
  const canvas = $("heatmap");
  const img = $("preview");
  const att = state.attention;
  // the canvas has the displayed image's size, so the map keeps the image's aspect ratio
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  clearHeatmap();
  const weights = shownWeights();
  if (!att || !weights || !$("show-heatmap").checked) return;
  const [rows, cols] = att.grid;
  const flat = weights.flat();
  const max = Math.max(...flat);
  if (!(max > 0)) return; // a word the model never read: nothing to draw
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const cells = small.getContext("2d").createImageData(cols, rows);
  flat.forEach((w, i) => cells.data.set(colour(w / max), 4 * i));
  small.getContext("2d").putImageData(cells, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true; // upsampled smoothly (bilinear), a map rather than blocks
  ctx.imageSmoothingQuality = "high";
  const crop = state.info ? state.info.image_crop : null;
  const [x, y, w, h] = gridBox(canvas.width, canvas.height, crop);
  ctx.drawImage(small, x, y, w, h);
}

// the word picker: the mean over the text, then each word (those the model never read disabled)
function fillWords(att) {
  const select = $("word");
  select.replaceChildren();
  const words = (att && att.words) || [];
  show($("word-field"), words.length > 0);
  const mean = document.createElement("option");
  mean.value = "";
  mean.textContent = "the whole text (mean over its tokens)";
  select.append(mean);
  words.forEach((entry, k) => {
    const option = document.createElement("option");
    option.value = String(k);
    const read = entry.weights.flat().some((w) => w > 0);
    option.textContent = read ? entry.word : `${entry.word} (not read: past the model's token limit)`;
    option.disabled = !read;
    select.append(option);
  });
  select.value = "";
}

function renderResult(result) {
  $("label").textContent = result.label;
  $("threshold").textContent = result.threshold === null
    ? "Label: the most probable class."
    : `Label: "${state.info.classes[1]}" when its probability is at least ${result.threshold.toFixed(3)} (the run's threshold).`;
  if (result.image_present === false) $("threshold").textContent += " No image was sent: predicted from the text alone.";
  const bars = $("probabilities");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "row" + (name === result.label ? " top" : "");
    row.dataset.class = name;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    label.title = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = p.toFixed(3);
    row.append(label, bar, value);
    bars.append(row);
  }
  const hasReliance = typeof result.image_reliance === "number";
  show($("reliance"), hasReliance);
  if (hasReliance) {
    $("reliance-fill").style.width = `${(100 * result.image_reliance).toFixed(1)}%`;
    $("reliance-text").textContent =
      `${result.image_reliance.toFixed(3)}: the share of the fused representation that came from the image.`;
  }
  state.attention = result.attention || null;
  show($("attention"), Boolean(state.attention));
  fillWords(state.attention);
  if (state.attention) {
    const [rows, cols] = state.attention.grid;
    const crop = typeof state.info.image_crop === "number" ? " over the centre square the model reads" : "";
    const omitted = state.attention.words_omitted
      ? ` Words after the first ${state.attention.words.length} (${state.attention.words_omitted}) have no map of their own.`
      : "";
    $("attention-text").textContent =
      `${rows} × ${cols} image regions${crop}, averaged over the text's tokens, or of the word chosen. ` +
      `Attention shows where the model looked, not why it decided.${omitted}`;
  }
  show($("result"), true);
  $("result").dataset.state = "done";
  drawHeatmap();
}

async function predict() {
  setError("");
  $("predict").disabled = true;
  $("result").dataset.state = "pending";
  const form = new FormData();
  if (state.info.inputs.includes("text")) form.append("text", $("text").value);
  if (state.info.inputs.includes("image") && state.file) form.append("image", state.file, state.file.name || "image");
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      $("result").dataset.state = "error";
      setError(describeError(response.status, body));
      return;
    }
    renderResult(body);
  } catch (err) {
    $("result").dataset.state = "error";
    setError(`Request failed: ${err}`);
  } finally {
    ready();
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => chooseFile(e.dataTransfer.files[0]));
  drop.addEventListener("click", (e) => { if (e.target === drop) $("file").click(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("predict").addEventListener("click", predict);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("predict").disabled) predict();
  });
  $("show-heatmap").addEventListener("change", drawHeatmap);
  $("word").addEventListener("change", drawHeatmap);
  $("preview").addEventListener("load", drawHeatmap);
  window.addEventListener("resize", drawHeatmap);
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
