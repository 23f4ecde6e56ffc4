// The classification page: plain JavaScript, same-origin calls only (GET /models, POST /predict,
// POST /feedback). Each image is its own request, so each shows its own round-trip time and its
// own error; each answer says when the image looks unlike the training data and, when the API
// keeps feedback (GET /models says so), takes a correction. "Show what the model looked at" asks
// POST /explain for each image and lays its occlusion map over the preview.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("imgcls-api-key") || "", pending: [], feedback: false };

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

async function loadModels() {
  const select = $("model");
  let body;
  try {
    const resp = await fetch("/models", { headers: headers() });
    body = await resp.json();
    if (resp.status === 401) $("keybox").hidden = false;
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
  } catch (err) {
    $("model-note").textContent = `models unavailable: ${err.message}`;
    return;
  }
  state.feedback = body.feedback === true;
  select.replaceChildren();
  for (const m of body.models) {
    const option = new Option(m.ready ? m.name : `${m.name} (not ready)`, m.name);
    option.disabled = !m.ready;
    option.selected = m.name === body.default;
    select.add(option);
  }
  const ready = body.models.filter((m) => m.ready).length;
  $("model-note").textContent = !ready
    ? "no model is ready: Triton may be down or still loading"
    : body.models.length > 1 ? "" : "one model served";
  $("served").textContent = `default model: ${body.default}`;
}

function percent(p) {
  return `${(100 * p).toFixed(p >= 0.999 || p < 0.001 ? 2 : 1)}%`;
}

function newCard(file) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.file = file;
  const img = card.querySelector(".preview");
  img.addEventListener("error", () => img.classList.add("unreadable"));
  img.src = URL.createObjectURL(file);
  img.alt = `preview of ${file.name || "pasted image"}`;
  card.classList.add("pending");
  card.querySelector(".meta").textContent = file.name || "pasted image";
  $("results").prepend(card);
  return card;
}

function showPrediction(card, body, ms, file) {
  card.classList.remove("pending");
  card.querySelector(".label").textContent = body.label;
  card.querySelector(".prob").textContent = percent(body.probability);
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  for (const p of body.predictions) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.label;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", `${p.label}: ${percent(p.probability)}`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(1, p.probability)) * 100}%`;
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(p.probability);
    li.append(name, track, pct);
    bars.append(li);
  }
  card.querySelector(".meta").textContent =
    `${file.name || "pasted image"} · model ${body.model.name} v${body.model.version} · ${ms.toFixed(0)} ms round trip`;
  card.querySelector(".unfamiliar").hidden = body.familiar !== false;
  card.querySelector(".unknown-class").hidden = body.known_class !== false;
  card.model = body.model.name;
  card.classList.add("answered");
  if (state.feedback && body.request_id) offerCorrection(card, body, file);
  if ($("explain").checked) explainCard(card);
}

async function explainCard(card) {
  const overlay = card.querySelector(".overlay");
  const legend = card.querySelector(".legend");
  if (card.explained) {
    overlay.hidden = legend.hidden = false;
    return;
  }
  const form = new FormData();
  form.append("image", card.file, card.file.name || "pasted.png");
  const url = `/explain?overlay=true&model=${encodeURIComponent(card.model)}`;
  legend.hidden = false;
  legend.textContent = "looking at what the model looked at…";
  try {
    const resp = await fetch(url, { method: "POST", body: form, headers: headers() });
    const body = await resp.json().catch(() => null);
    if (!resp.ok || !body) {
      const error = (body && body.error) || { message: resp.statusText };
      legend.textContent = `No map: ${error.message}`;
      return;
    }
    const e = body.explanation;
    overlay.src = e.overlay;
    overlay.alt = `occlusion map: the parts of the image the answer “${e.class}” depends on, in red`;
    card.explained = true;
    overlay.hidden = !$("explain").checked;
    legend.textContent = `red: where hiding the image takes “${e.class}” away (occlusion, ${e.passes} passes)`;
    legend.hidden = !$("explain").checked;
  } catch (err) {
    legend.textContent = `No map: ${err.message}`;
  }
}

function toggleExplanations() {
  for (const card of document.querySelectorAll("#results .result.answered")) {
    if ($("explain").checked) explainCard(card);
    else card.querySelector(".overlay").hidden = card.querySelector(".legend").hidden = true;
  }
}

const NEW_CLASS = "\u0000new"; // the select's value for "a class it does not know"

function offerCorrection(card, body, file) {
  const form = card.querySelector(".correct");
  const select = form.querySelector("select");
  select.replaceChildren();
  for (const p of body.predictions) select.add(new Option(p.label, p.label));
  select.add(new Option("a class it does not know…", NEW_CLASS));
  const other = body.predictions.find((p) => p.label !== body.label);
  if (body.known_class === false) select.value = NEW_CLASS; // what the model itself suspects
  else if (other) select.value = other.label;
  const name = form.querySelector(".new-class");
  const showName = () => { name.hidden = select.value !== NEW_CLASS; };
  select.addEventListener("change", showName);
  showName();
  form.hidden = false;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const sent = form.querySelector(".sent");
    const data = new FormData();
    data.append("request_id", body.request_id);
    data.append("index", "0");
    const isNew = select.value === NEW_CLASS;
    data.append("label", isNew ? name.value.trim() : select.value);
    if (isNew) data.append("new_class", "true");
    data.append("image", file, file.name || "pasted.png"); // used when the API did not keep it
    sent.textContent = "sending…";
    try {
      const resp = await fetch("/feedback", { method: "POST", body: data, headers: headers() });
      const answer = await resp.json().catch(() => null);
      if (resp.ok) {
        sent.textContent = answer.new_class
          ? `Thank you: saved as “${answer.label}”, a new class, for review before the next training run.`
          : `Thank you: saved as “${answer.label}” for the next training run.`;
      } else {
        const error = (answer && answer.error) || { message: resp.statusText };
        const retry = resp.headers.get("Retry-After");
        sent.textContent = `Not saved: ${error.message}${retry ? ` (try again in ${retry} s)` : ""}`;
      }
    } catch (err) {
      sent.textContent = `Not saved: ${err.message}`;
    }
  });
}

function showError(card, resp, body, file) {
  card.classList.remove("pending");
  const error = (body && body.error) || { code: `http_${resp.status}`, message: resp.statusText };
  let text = `${error.message} (${error.code})`;
  const retry = resp.headers.get("Retry-After");
  if (retry) text += ` — try again in ${retry} s`;
  const p = card.querySelector(".error");
  p.textContent = text;
  p.hidden = false;
  card.querySelector(".label").textContent = resp.status === 0 ? "not sent" : `error ${resp.status}`;
  card.querySelector(".meta").textContent = file.name || "pasted image";
  if (resp.status === 401) {
    $("keybox").hidden = false;
    state.pending.push(file);
    $("apikey").focus();
  }
}

async function classify(file) {
  const card = newCard(file);
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  const model = $("model").value;
  const url = model ? `/predict?model=${encodeURIComponent(model)}` : "/predict";
  const started = performance.now();
  let resp;
  try {
    resp = await fetch(url, { method: "POST", body: form, headers: headers() });
  } catch (err) {
    showError(card, { status: 0, statusText: err.message, headers: new Headers() }, null, file);
    return;
  }
  const ms = performance.now() - started;
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (resp.ok && body) showPrediction(card, body, ms, file);
  else showError(card, resp, body, file);
}

function classifyAll(files) {
  for (const file of files) classify(file);
}

function wire() {
  const drop = $("drop");
  for (const id of ["files", "camera"]) {
    $(id).addEventListener("change", (e) => {
      classifyAll([...e.target.files]);
      e.target.value = "";
    });
  }
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classifyAll([...e.dataTransfer.files]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("files").click();
    }
  });
  document.addEventListener("paste", (e) => {
    const files = [...e.clipboardData.items]
      .filter((item) => item.kind === "file")
      .map((item) => item.getAsFile());
    if (files.length) classifyAll(files);
  });
  $("keybox").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("apikey").value.trim();
    sessionStorage.setItem("imgcls-api-key", state.key);
    $("keybox").hidden = true;
    const again = state.pending.splice(0);
    loadModels();
    classifyAll(again);
  });
  $("explain").addEventListener("change", toggleExplanations);
  $("model").addEventListener("change", () => {
    $("served").textContent = `next images go to ${$("model").value}`;
  });
}

wire();
loadModels();
