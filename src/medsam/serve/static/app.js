// medsam annotation page: plain JS, no build step. Talks to the API of the same server (/api/...).
// The slice, the accepted labels and the draft mask are drawn on one canvas; masks arrive as run
// lengths (RLE) and are painted straight into pixel buffers, so a prompt shows up as soon as it returns.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: null,
  session: null,          // SessionInfo
  z: 0,
  window: "auto",
  image: null,            // ImageBitmap of the slice
  labelValues: null,      // Uint8Array of the slice's label map
  labelsCanvas: document.createElement("canvas"),
  draftCanvas: document.createElement("canvas"),
  draft: null,            // MaskResponse of object 0 on this slice
  hidden: new Set(),      // label values not shown
  showLabels: true,
  selectedLabel: null,
  drag: null,             // {x0, y0, x1, y1} while drawing a box
  pending: 0,             // prompt requests in flight
  job: null,
  browserPath: "",
  sliceToken: 0,          // guards against late answers for a slice we already left
  proposals: [],          // automatic proposals of this slice (with decoded masks)
  selectedProposal: null,
  proposalsCanvas: document.createElement("canvas"),
};

// ---------------------------------------------------------------------------------------------------
// HTTP

function tokenFromFragment() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    const token = decodeURIComponent(m[1]);
    sessionStorage.setItem("medsam-token", token);
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
    return token;
  }
  return sessionStorage.getItem("medsam-token");
}

async function api(path, { method = "GET", json, body, raw = false, retry = true } = {}) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const res = await fetch(path, { method, headers, body });
  if (res.status === 401 && retry) {
    const token = window.prompt("This server needs its access token:");
    if (token) {
      state.token = token.trim();
      sessionStorage.setItem("medsam-token", state.token);
      return api(path, { method, json, body, raw, retry: false });
    }
  }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

function setStatus(text, kind = "idle", extra = {}) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
  for (const [k, v] of Object.entries(extra)) el.dataset[k] = v;
}

function fail(err) {
  console.error(err);
  setStatus(err.message || String(err), "error");
}

// ---------------------------------------------------------------------------------------------------
// masks and labels -> pixels

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function rleToMask(counts, n) {
  const mask = new Uint8Array(n);
  let pos = 0;
  for (let i = 0; i < counts.length; i++) {
    const run = counts[i];
    if (i & 1) mask.fill(1, pos, pos + run);
    pos += run;
  }
  return mask;
}

function paintMask(canvas, mask, w, h, rgb, alpha) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = new Uint32Array(img.data.buffer);
  const fill = (alpha << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0];
  const edge = (255 << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0];
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      const i = row + x;
      if (!mask[i]) continue;
      const border = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
      px[i] = border ? edge : fill;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function paintLabels() {
  const s = state.session;
  const c = state.labelsCanvas;
  if (!s || !state.labelValues) { c.width = 1; c.height = 1; return; }
  const [, h, w] = s.shape;
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = new Uint32Array(img.data.buffer);
  const lut = new Uint32Array(256);
  for (const l of s.label_list) {
    if (state.hidden.has(l.value)) continue;
    const [r, g, b] = hexToRgb(l.colour);
    lut[l.value] = (110 << 24) | (b << 16) | (g << 8) | r;
  }
  const v = state.labelValues;
  for (let i = 0; i < v.length; i++) if (v[i]) px[i] = lut[v[i]];
  ctx.putImageData(img, 0, 0);
}

function paintDraft() {
  const d = state.draft;
  const s = state.session;
  if (!d || !d.has_mask || !d.mask || !s) { state.draftCanvas.width = 1; state.draftCanvas.height = 1; return; }
  const { width: w, height: h, counts } = d.mask;
  paintMask(state.draftCanvas, rleToMask(counts, w * h), w, h, hexToRgb($("label-colour").value), 120);
}

// ---------------------------------------------------------------------------------------------------
// drawing

function render() {
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const s = state.session;
  if (!s || !state.image) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(state.image, 0, 0);
  if (state.showLabels && state.labelValues) ctx.drawImage(state.labelsCanvas, 0, 0);
  if (state.proposals.length) ctx.drawImage(state.proposalsCanvas, 0, 0);
  if (state.draft && state.draft.has_mask) ctx.drawImage(state.draftCanvas, 0, 0);
  const lw = Math.max(1, canvas.width / 400);
  const p = state.draft && state.draft.has_mask ? state.draft.prompt : null;
  if (p && p.box) {
    ctx.setLineDash([4 * lw, 3 * lw]);
    ctx.strokeStyle = "#ffd35c"; ctx.lineWidth = lw;
    const [x0, y0, x1, y1] = p.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
  if (p) {
    p.points.forEach(([x, y], i) => {
      ctx.beginPath();
      ctx.arc(x, y, 3 * lw, 0, 2 * Math.PI);
      ctx.fillStyle = p.point_labels[i] ? "#2fdc4a" : "#ff3b3b";
      ctx.fill();
      ctx.strokeStyle = "#fff"; ctx.lineWidth = lw; ctx.stroke();
    });
  }
  if (state.drag) {
    const { x0, y0, x1, y1 } = state.drag;
    ctx.strokeStyle = "#4aa3ff"; ctx.lineWidth = lw;
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
  }
}

function fitCanvas() {
  const s = state.session;
  const canvas = $("view");
  if (!s) return;
  const [, h, w] = s.shape;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  // physical aspect: rows are spacing_y apart, columns spacing_x
  const sy = s.spacing_mm[1] || 1, sx = s.spacing_mm[2] || 1;
  const wrap = $("canvas-wrap").clientWidth || 800;
  const maxH = window.innerHeight - 130;
  let cssW = Math.max(w, Math.min(wrap, 1024));
  let cssH = cssW * (h * sy) / (w * sx);
  if (cssH > maxH) { cssH = maxH; cssW = cssH * (w * sx) / (h * sy); }
  canvas.style.width = cssW + "px";
  canvas.style.height = cssH + "px";
}

// ---------------------------------------------------------------------------------------------------
// session and slices

async function openSession(info) {
  state.session = info;
  state.z = Math.floor(info.shape[0] / 2);
  state.draft = null;
  state.hidden.clear();
  state.selectedLabel = info.label_list.length ? info.label_list[0].value : null;
  const orient = info.dims === "3d" && info.orientation ? ", " + info.orientation.name + (info.orientation.plane ? " " + info.orientation.plane : "") : "";
  $("session-name").textContent = info.name + " (" + info.shape.join("x") + (info.modality ? ", " + info.modality : "") + orient + ")";
  $("session-name").title = info.orientation ? "view: " + info.orientation.description : "";
  location.hash = "session=" + info.id;
  const win = $("window");
  win.innerHTML = "";
  for (const p of info.window_presets.concat(["custom"])) {
    const o = document.createElement("option");
    o.value = p; o.textContent = p.replace("_", " ");
    win.appendChild(o);
  }
  state.window = "auto";
  $("window-custom").hidden = true;
  const slider = $("slice");
  slider.max = info.shape[0] - 1;
  $("slice-bar").style.display = info.shape[0] > 1 ? "" : "none";
  $("propagate-row").style.display = info.dims === "3d" && info.shape[0] > 1 ? "" : "none";
  $("correct-row").style.display = $("propagate-row").style.display;
  // a session whose label was propagated already: clicks correct it in 3D
  $("correct3d").checked = info.dims === "3d" && info.label_list.some((l) => l.propagated_slices.length > 0);
  $("undo3d").disabled = true;
  const formats = info.dims === "2d" ? ["png", "overlay", "npz", "nifti"] : ["nifti", "nrrd", "dicom-seg", "rtstruct", "npz", "montage"];
  $("export-format").innerHTML = formats.map((f) => `<option>${f}</option>`).join("");
  fitCanvas();
  renderLabelList();
  renderExports(info.exports);
  if (window.pacsSessionOpened) window.pacsSessionOpened(info);  // pacs.js: "Export to PACS" for PACS series
  await showSlice(state.z);
  refreshSessions();
}

async function showSlice(z) {
  const s = state.session;
  if (!s) return;
  z = Math.max(0, Math.min(s.shape[0] - 1, z));
  state.z = z;
  const ticket = ++state.sliceToken;
  $("slice").value = z;
  $("slice-label").textContent = `z ${z} / ${s.shape[0] - 1}`;
  const win = encodeURIComponent(state.window);
  const [imgRes, labRes, draft] = await Promise.all([
    api(`/api/sessions/${s.id}/slices/${z}/image?window=${win}`, { raw: true }),
    api(`/api/sessions/${s.id}/slices/${z}/labels`, { raw: true }),
    api(`/api/sessions/${s.id}/slices/${z}/draft?mask_format=rle`),
  ]);
  const image = await createImageBitmap(await imgRes.blob());
  clearProposals();
  const labels = await decodeLabels(await labRes.blob());
  if (ticket !== state.sliceToken) return;  // the person moved on meanwhile
  state.image = image;
  state.labelValues = labels;
  state.draft = draft;
  paintLabels();
  paintDraft();
  render();
  updateDraftInfo();
  // encode once the person stays on this slice (scrolling through a volume must not queue encodes)
  setTimeout(() => { if (ticket === state.sliceToken) ensureEncoded(z, ticket); }, 250);
}

async function decodeLabels(blob) {
  const bmp = await createImageBitmap(blob);
  const c = document.createElement("canvas");
  c.width = bmp.width; c.height = bmp.height;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const rgba = ctx.getImageData(0, 0, c.width, c.height).data;
  const out = new Uint8Array(c.width * c.height);
  for (let i = 0; i < out.length; i++) out[i] = rgba[4 * i];
  return out;
}

async function refreshLabels() {
  const s = state.session;
  if (!s) return;
  const [list, labRes] = await Promise.all([
    api(`/api/sessions/${s.id}/labels`),
    api(`/api/sessions/${s.id}/slices/${state.z}/labels`, { raw: true }),
  ]);
  s.label_list = list.labels;
  state.labelValues = await decodeLabels(await labRes.blob());
  paintLabels();
  renderLabelList();
  render();
}

async function ensureEncoded(z, ticket) {
  const s = state.session;
  const el = $("encode-state");
  el.textContent = "encoding\u2026";
  setStatus(`slice ${z}: encoding\u2026`, "busy");
  try {
    const r = await api(`/api/sessions/${s.id}/slices/${z}/encode`, { method: "POST" });
    if (ticket !== state.sliceToken) return;
    el.textContent = r.cached ? "ready" : `encoded in ${Math.round(r.encode_ms)} ms`;
    setStatus(`slice ${z} ready: drag a box or click`, "ready");
  } catch (err) { fail(err); }
}

// ---------------------------------------------------------------------------------------------------
// prompts

function updateDraftInfo() {
  const d = state.draft;
  $("undo").disabled = !(d && d.can_undo);
  $("redo").disabled = !(d && d.can_redo);
  $("accept").disabled = !(d && d.has_mask && d.area_px > 0);
  $("draft-info").textContent = d && d.has_mask
    ? `mask ${d.area_px} px, predicted IoU ${d.iou.toFixed(3)}, step ${d.step + 1}/${d.steps}`
    : "";
}

async function sendPrompt(path, body, t0) {
  const s = state.session;
  const z = state.z;
  state.pending++;
  setStatus("predicting\u2026", "busy");
  try {
    const r = await api(`/api/sessions/${s.id}/slices/${z}/${path}`, { method: "POST", json: { ...body, mask_format: "rle" } });
    if (z !== state.z) return;
    state.draft = r;
    paintDraft();
    render();
    updateDraftInfo();
    requestAnimationFrame(() => {
      const total = performance.now() - t0;
      const el = $("latency");
      el.textContent = `${Math.round(total)} ms to screen (server ${Math.round(r.latency_ms)} ms, decode ${Math.round(r.decode_ms)} ms` +
        (r.encode_ms ? `, encode ${Math.round(r.encode_ms)} ms` : "") + (r.wait_ms > 20 ? `, waited ${Math.round(r.wait_ms)} ms for the model` : "") + ")";
      el.dataset.totalMs = total.toFixed(1);
      el.dataset.serverMs = r.latency_ms.toFixed(1);
      setStatus(r.has_mask ? `mask: ${r.area_px} px` : "no mask", r.has_mask ? "mask" : "ready", { area: r.area_px, step: r.step });
    });
  } catch (err) { fail(err); } finally { state.pending--; }
}

function canvasPoint(ev) {
  const canvas = $("view");
  const rect = canvas.getBoundingClientRect();
  const x = (ev.clientX - rect.left) * canvas.width / rect.width;
  const y = (ev.clientY - rect.top) * canvas.height / rect.height;
  return [Math.max(0, Math.min(canvas.width - 1, x)), Math.max(0, Math.min(canvas.height - 1, y))];
}

function setupCanvas() {
  const canvas = $("view");
  let down = null;
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("mousedown", (ev) => {
    if (!state.session) return;
    canvas.focus();
    const [x, y] = canvasPoint(ev);
    down = { x, y, button: ev.button, cx: ev.clientX, cy: ev.clientY };
    if (ev.button === 0) state.drag = null;
  });
  canvas.addEventListener("mousemove", (ev) => {
    if (!down || down.button !== 0) return;
    if (Math.hypot(ev.clientX - down.cx, ev.clientY - down.cy) < 4 && !state.drag) return;
    const [x, y] = canvasPoint(ev);
    state.drag = { x0: down.x, y0: down.y, x1: x, y1: y };
    render();
  });
  window.addEventListener("mouseup", (ev) => {
    if (!down) return;
    const t0 = performance.now();
    const start = down;
    down = null;
    if (start.button === 0 && state.drag) {
      const { x0, y0, x1, y1 } = state.drag;
      state.drag = null;
      const box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map((v) => Math.round(v));
      if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { render(); return; }
      if (correcting()) { sendCorrection({ box }); return; }
      sendPrompt("prompts", { box }, t0);
    } else if (start.button === 0 || start.button === 2) {
      if (ev.target !== canvas) return;
      const [x, y] = canvasPoint(ev);
      const click = { points: [[Math.round(x), Math.round(y)]], point_labels: [start.button === 0 ? 1 : 0] };
      if (correcting()) { sendCorrection(click); return; }
      sendPrompt("refine", click, t0);
    }
  });
  canvas.addEventListener("wheel", (ev) => {
    if (!state.session || state.session.shape[0] < 2) return;
    ev.preventDefault();
    showSlice(state.z + (ev.deltaY > 0 ? 1 : -1)).catch(fail);
  }, { passive: false });
}

async function step(kind) {
  const s = state.session;
  if (!s) return;
  try {
    state.draft = await api(`/api/sessions/${s.id}/slices/${state.z}/${kind}`, { method: "POST", json: { mask_format: "rle" } });
    paintDraft(); render(); updateDraftInfo();
    setStatus(`${kind}: step ${state.draft.step + 1}/${state.draft.steps}`, state.draft.has_mask ? "mask" : "ready");
  } catch (err) { if (err.status === 409) setStatus(err.message, "ready"); else fail(err); }
}

async function clearDraft() {
  const d = state.draft;
  if (!d || !d.has_mask) return;
  // undo back to the start: the history stays available for redo
  while (state.draft && state.draft.can_undo) {
    state.draft = await api(`/api/sessions/${state.session.id}/slices/${state.z}/undo`, { method: "POST", json: { mask_format: "none" } });
  }
  paintDraft(); render(); updateDraftInfo();
}

async function accept() {
  const s = state.session;
  const d = state.draft;
  if (s && (!d || !d.has_mask) && state.selectedProposal !== null) { acceptProposal(); return; }
  if (!s || !d || !d.has_mask) { setStatus("nothing to accept: draw a box or click first", "ready"); return; }
  const name = $("label-name").value.trim() || "label";
  const existing = s.label_list.find((l) => l.name === name);
  try {
    const r = await api(`/api/sessions/${s.id}/slices/${state.z}/accept`, {
      method: "POST",
      json: { label: name, colour: existing ? null : $("label-colour").value },
    });
    state.draft = null;
    state.selectedLabel = r.label.value;
    paintDraft();
    await refreshLabels();
    updateDraftInfo();
    setStatus(`accepted ${r.area_px} px as "${r.label.name}" on slice ${r.z} (saved)`, "accepted", { revision: r.revision });
    suggestNextLabel();
    refreshSessions();
  } catch (err) { fail(err); }
}

function suggestNextLabel() {
  const s = state.session;
  const names = new Set(s.label_list.map((l) => l.name));
  const current = $("label-name").value.trim();
  if (!names.has(current)) return;
  if (s.dims === "3d") return;  // on volumes the same structure goes on, slice after slice
  let n = s.label_list.length + 1;
  while (names.has(`label ${n}`)) n++;
  $("label-name").value = `label ${n}`;
  const palette = ["#ff4040", "#40c8ff", "#ffc800", "#78ff5a", "#ff5adc", "#00ffc8", "#ff8c28", "#a078ff"];
  $("label-colour").value = palette[(n - 1) % palette.length];
}

// ---------------------------------------------------------------------------------------------------
// automatic proposals ("segment everything"): pick one, name it with Accept, or delete it

function clearProposals() {
  state.proposals = [];
  state.selectedProposal = null;
  $("proposals").innerHTML = "";
  $("suggest-info").textContent = "";
}

function paintProposals() {
  const s = state.session;
  const c = state.proposalsCanvas;
  const [, h, w] = s.shape;
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = new Uint32Array(img.data.buffer);
  const edge = (255 << 24) | (0x30 << 16) | (0xd8 << 8) | 0xff;        // amber outline
  const fill = (90 << 24) | (0xff << 16) | (0xd0 << 8) | 0x40;         // light blue fill for the selected one
  for (const p of state.proposals) {
    const m = p.maskArray;
    const selected = p.id === state.selectedProposal;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!m[i]) continue;
        const border = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !m[i - 1] || !m[i + 1] || !m[i - w] || !m[i + w];
        if (border) px[i] = edge; else if (selected) px[i] = fill;
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}

function renderProposalList() {
  const ul = $("proposals");
  ul.innerHTML = "";
  for (const p of state.proposals) {
    const li = document.createElement("li");
    li.dataset.id = p.id;
    if (p.id === state.selectedProposal) li.classList.add("selected");
    const text = document.createElement("span");
    text.textContent = `#${p.id}: ${p.area_px} px` + (p.iou !== null ? `, IoU ${p.iou.toFixed(2)}` : "");
    text.onclick = () => selectProposal(p.id);
    const del = document.createElement("button");
    del.textContent = "\u00d7"; del.title = "delete this proposal";
    del.onclick = () => deleteProposal(p.id);
    li.append(text, del);
    ul.appendChild(li);
  }
}

function selectProposal(id) {
  state.selectedProposal = state.selectedProposal === id ? null : id;
  paintProposals(); renderProposalList(); render();
  if (state.selectedProposal !== null) setStatus(`proposal #${id} selected: Enter names it with the label name, Delete drops it`, "proposal");
}

async function suggest() {
  const s = state.session;
  const z = state.z;
  setStatus("finding proposals (this takes a while on a CPU)\u2026", "busy");
  try {
    const r = await api(`/api/sessions/${s.id}/slices/${z}/proposals`, { method: "POST", json: { mask_format: "rle", grid: 8, pred_iou_thresh: 0.7, stability_thresh: 0.8 } });
    if (z !== state.z) return;
    const n = s.shape[1] * s.shape[2];
    state.proposals = r.proposals.map((p) => ({ ...p, maskArray: rleToMask(p.mask.counts, n) }));
    state.selectedProposal = null;
    paintProposals(); renderProposalList(); render();
    $("suggest-info").textContent = `${r.proposals.length} proposals` + (r.computed ? ` in ${(r.latency_ms / 1000).toFixed(1)} s` : "");
    setStatus(`${r.proposals.length} proposals: click one in the list, then Enter to name it`, "proposals", { count: r.proposals.length });
  } catch (err) { fail(err); }
}

async function acceptProposal() {
  const s = state.session;
  const id = state.selectedProposal;
  const name = $("label-name").value.trim() || "label";
  const existing = s.label_list.find((l) => l.name === name);
  try {
    const r = await api(`/api/sessions/${s.id}/slices/${state.z}/proposals/${id}/accept`, {
      method: "POST", json: { label: name, colour: existing ? null : $("label-colour").value },
    });
    state.proposals = state.proposals.filter((p) => p.id !== id);
    state.selectedProposal = null;
    paintProposals(); renderProposalList();
    await refreshLabels();
    setStatus(`accepted proposal #${id} as "${r.label.name}" (${r.area_px} px, saved)`, "accepted", { revision: r.revision });
    suggestNextLabel();
  } catch (err) { fail(err); }
}

async function deleteProposal(id) {
  const s = state.session;
  try {
    await api(`/api/sessions/${s.id}/slices/${state.z}/proposals/${id}`, { method: "DELETE" });
    state.proposals = state.proposals.filter((p) => p.id !== id);
    if (state.selectedProposal === id) state.selectedProposal = null;
    paintProposals(); renderProposalList(); render();
  } catch (err) { fail(err); }
}

// ---------------------------------------------------------------------------------------------------
// labels panel

function renderLabelList() {
  const s = state.session;
  const ul = $("labels");
  ul.innerHTML = "";
  if (!s) return;
  for (const l of s.label_list) {
    const li = document.createElement("li");
    li.dataset.value = l.value;
    if (l.value === state.selectedLabel) li.classList.add("selected");
    const vis = document.createElement("input");
    vis.type = "checkbox"; vis.checked = !state.hidden.has(l.value); vis.title = "show / hide";
    vis.onchange = () => { vis.checked ? state.hidden.delete(l.value) : state.hidden.add(l.value); paintLabels(); render(); };
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = l.colour;
    const colour = document.createElement("input");
    colour.type = "color"; colour.value = l.colour; colour.hidden = true;
    sw.onclick = () => colour.click();
    colour.onchange = () => api(`/api/sessions/${s.id}/labels/${l.value}`, { method: "PATCH", json: { colour: colour.value } }).then(refreshLabels).catch(fail);
    const name = document.createElement("span");
    name.className = "name"; name.textContent = l.name;
    name.title = `value ${l.value}; slices ${l.slices.join(", ")}; double-click to rename`;
    name.onclick = () => {
      state.selectedLabel = l.value;
      $("label-name").value = l.name;
      $("label-colour").value = l.colour;
      renderLabelList();
    };
    name.ondblclick = () => {
      const next = window.prompt("Rename label", l.name);
      if (next && next.trim() && next.trim() !== l.name) {
        api(`/api/sessions/${s.id}/labels/${l.value}`, { method: "PATCH", json: { name: next.trim() } }).then(refreshLabels).catch(fail);
      }
    };
    const count = document.createElement("span");
    count.className = "count"; count.textContent = `${l.voxels} px`;
    const del = document.createElement("button");
    del.textContent = "\u00d7"; del.title = "delete this label";
    del.onclick = () => {
      if (!window.confirm(`Delete label "${l.name}" and its ${l.voxels} voxels?`)) return;
      api(`/api/sessions/${s.id}/labels/${l.value}`, { method: "DELETE" }).then(refreshLabels).catch(fail);
    };
    li.append(vis, sw, colour, name, count, del);
    ul.appendChild(li);
  }
}

// ---------------------------------------------------------------------------------------------------
// propagation and 3D corrections

function correcting() {
  // a click corrects the selected label in 3D when asked, on a volume, with no 2D draft in progress
  const s = state.session;
  return $("correct3d").checked && s && s.dims === "3d" && state.selectedLabel && !(state.draft && state.draft.has_mask);
}

async function sendCorrection(body) {
  const s = state.session;
  const z = state.z;
  state.pending++;
  setStatus("correcting in 3D\u2026", "busy");
  try {
    const r = await api(`/api/sessions/${s.id}/corrections`, { method: "POST", json: { label: state.selectedLabel, z, ...body } });
    await refreshLabels();
    $("undo3d").disabled = !r.can_undo;
    const ends = r.ends.length ? ` (${r.ends.join("; ")})` : "";
    setStatus(`3D correction on slice ${z}: ${r.changed_slices.length} slices changed in ${Math.round(r.model_ms)} ms${ends}`,
      "corrected", { changed: r.changed_slices.join(",") });
  } catch (err) { fail(err); } finally { state.pending--; }
}

async function undoCorrection() {
  const s = state.session;
  if (!s) return;
  try {
    const r = await api(`/api/sessions/${s.id}/corrections/undo`, { method: "POST" });
    await refreshLabels();
    $("undo3d").disabled = !r.can_undo;
    setStatus(`undid a 3D correction: ${r.changed_slices.length} slices back`, "corrected", { changed: r.changed_slices.join(",") });
  } catch (err) { if (err.status === 409) setStatus(err.message, "ready"); else fail(err); }
}

async function propagate() {
  const s = state.session;
  if (!s) return;
  const label = state.selectedLabel || (s.label_list[0] && s.label_list[0].value);
  if (!label) { setStatus("accept a mask first, then propagate its label", "ready"); return; }
  try {
    const job = await api(`/api/sessions/${s.id}/propagate`, { method: "POST", json: { label } });
    state.job = job;
    $("propagate").disabled = true;
    $("propagate-cancel").hidden = false;
    pollJob(job.id, 0);
  } catch (err) { fail(err); }
}

async function pollJob(id, written) {
  const s = state.session;
  try {
    const job = await api(`/api/sessions/${s.id}/jobs/${id}`);
    $("progress").value = job.progress;
    $("job-info").textContent = `${job.state}: ${job.slices_done}/${job.slices_total} slices` + (job.message ? ` \u2014 ${job.message}` : "");
    setStatus(`propagating: ${Math.round(job.progress * 100)}%`, job.state === "running" ? "busy" : job.state, {});
    if (job.slices_written.length !== written) await refreshLabels();
    if (job.state === "queued" || job.state === "running") {
      setTimeout(() => pollJob(id, job.slices_written.length), 250);
      return;
    }
    $("propagate").disabled = false;
    $("propagate-cancel").hidden = true;
    state.job = null;
    await refreshLabels();
    if (job.state === "done") $("correct3d").checked = true;  // the next clicks correct the propagated label
    setStatus(`propagation ${job.state}: ${job.message || ""}`, job.state === "failed" ? "error" : "propagated");
  } catch (err) { fail(err); }
}

// ---------------------------------------------------------------------------------------------------
// export

function renderExports(names) {
  const ul = $("exports");
  ul.innerHTML = "";
  for (const name of names || []) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#"; a.textContent = name;
    a.dataset.name = name;
    a.onclick = (ev) => { ev.preventDefault(); download(name).catch(fail); };
    li.appendChild(a);
    ul.appendChild(li);
  }
}

async function download(name) {
  const s = state.session;
  const res = await api(`/api/sessions/${s.id}/exports/${encodeURIComponent(name)}`, { raw: true });
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

async function exportLabels() {
  const s = state.session;
  if (!s) return;
  const format = $("export-format").value;
  let overwrite = false;
  for (;;) {
    try {
      const r = await api(`/api/sessions/${s.id}/export`, { method: "POST", json: { format, overwrite } });
      const list = await api(`/api/sessions/${s.id}/exports`);
      renderExports(list.exports.map((e) => e.name));
      setStatus(`exported ${r.name} (${r.size_bytes} bytes)`, "exported", { export: r.name });
      return;
    } catch (err) {
      if (err.status === 409 && !overwrite && /already exists/.test(err.message) && window.confirm(err.message + "\n\nOverwrite it?")) {
        overwrite = true;
        continue;
      }
      fail(err);
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// opening

async function refreshSessions() {
  try {
    const list = await api("/api/sessions");
    const sel = $("session-select");
    sel.innerHTML = `<option value="">sessions (${list.length})\u2026</option>` + list.map(
      (s) => `<option value="${s.id}"${state.session && s.id === state.session.id ? " selected" : ""}>${s.name} \u2014 ${s.labels} labels${s.available ? "" : " (unavailable)"}</option>`
    ).join("");
  } catch (err) { /* token prompt declined */ }
}

async function uploadFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  setStatus(`uploading ${file.name}\u2026`, "busy");
  try {
    const info = await api("/api/sessions/upload", { method: "POST", body: form });
    await openSession(info);
  } catch (err) { fail(err); }
}

async function browse(path) {
  try {
    const list = await api(`/api/files?path=${encodeURIComponent(path)}`);
    state.browserPath = list.path;
    $("browser-path").textContent = "/" + list.path;
    $("browser-list").innerHTML = list.entries.map(
      (e) => `<option value="${e.path}" data-dir="${e.is_dir}">${e.is_dir ? "\u{1F4C1} " : ""}${e.name}</option>`
    ).join("");
    $("browser").hidden = false;
  } catch (err) { fail(err); }
}

async function openPath(path) {
  $("browser").hidden = true;
  setStatus(`opening ${path}\u2026`, "busy");
  try { await openSession(await api("/api/sessions", { method: "POST", json: { path } })); } catch (err) { fail(err); }
}

// ---------------------------------------------------------------------------------------------------
// wiring

function setupControls() {
  $("file-input").onchange = (ev) => { if (ev.target.files[0]) uploadFile(ev.target.files[0]); ev.target.value = ""; };
  $("session-select").onchange = async (ev) => {
    if (!ev.target.value) return;
    try { await openSession(await api(`/api/sessions/${ev.target.value}`)); } catch (err) { fail(err); }
  };
  $("browse-button").onclick = () => browse(state.browserPath);
  $("browser-close").onclick = () => { $("browser").hidden = true; };
  $("browser-up").onclick = () => browse(state.browserPath.split("/").slice(0, -1).join("/"));
  const enterOrOpen = () => {
    const o = $("browser-list").selectedOptions[0];
    if (!o) return;
    if (o.dataset.dir === "true" && !/dicom|series|dcm/i.test(o.value)) browse(o.value); else openPath(o.value);
  };
  $("browser-list").ondblclick = enterOrOpen;
  $("browser-list").onkeydown = (ev) => { if (ev.key === "Enter") { ev.preventDefault(); enterOrOpen(); } };
  $("browser-open").onclick = () => { const o = $("browser-list").selectedOptions[0]; if (o) openPath(o.value); };
  $("slice").oninput = (ev) => showSlice(parseInt(ev.target.value, 10)).catch(fail);
  $("slice-prev").onclick = () => showSlice(state.z - 1).catch(fail);
  $("slice-next").onclick = () => showSlice(state.z + 1).catch(fail);
  $("window").onchange = (ev) => {
    const custom = ev.target.value === "custom";
    $("window-custom").hidden = !custom;
    if (!custom) { state.window = ev.target.value; showSlice(state.z).catch(fail); }
  };
  $("window-custom").onchange = (ev) => { state.window = ev.target.value.trim() || "auto"; showSlice(state.z).catch(fail); };
  $("accept").onclick = accept;
  $("undo").onclick = () => step("undo");
  $("redo").onclick = () => step("redo");
  $("clear").onclick = () => clearDraft().catch(fail);
  $("label-colour").oninput = () => { paintDraft(); render(); };
  $("propagate").onclick = propagate;
  $("propagate-cancel").onclick = () => {
    if (state.job) api(`/api/sessions/${state.session.id}/jobs/${state.job.id}`, { method: "DELETE" }).catch(fail);
  };
  $("undo3d").onclick = undoCorrection;
  $("export").onclick = exportLabels;
  $("suggest").onclick = suggest;
  window.addEventListener("resize", () => { fitCanvas(); });
  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" && ev.target.type !== "range" && ev.target.type !== "checkbox") {
      if (ev.key === "Enter" && ev.target.id === "label-name") { ev.preventDefault(); accept(); }
      return;
    }
    if (tag === "select" || !state.session) return;
    const key = ev.key;
    if (key === "Enter") { ev.preventDefault(); accept(); }
    else if (key === "z" && !ev.shiftKey && !ev.ctrlKey) step("undo");
    else if ((key === "Z" && ev.shiftKey) || key === "y") step("redo");
    else if (key === "Escape") clearDraft().catch(fail);
    else if (key === "v") { state.showLabels = !state.showLabels; render(); }
    else if ((key === "Delete" || key === "Backspace") && state.selectedProposal !== null) deleteProposal(state.selectedProposal);
    else if (key === "ArrowUp" || key === "ArrowRight") { ev.preventDefault(); showSlice(state.z + 1).catch(fail); }
    else if (key === "ArrowDown" || key === "ArrowLeft") { ev.preventDefault(); showSlice(state.z - 1).catch(fail); }
  });
}

async function main() {
  state.token = tokenFromFragment();
  setupCanvas();
  setupControls();
  try { $("suggest-row").hidden = !(await api("/api/health")).proposals; } catch (err) { fail(err); }
  await refreshSessions();
  const m = /session=([0-9a-f]+)/.exec(location.hash);
  if (m) {
    try { await openSession(await api(`/api/sessions/${m[1]}`)); } catch (err) { fail(err); }
  }
}

main().catch(fail);
