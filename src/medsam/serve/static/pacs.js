// medsam annotation page, PACS part (medsam serve --dicomweb URL): browse the studies and series of the PACS,
// open a series as a session, and store the accepted labels back ("Export to PACS"). Uses app.js's helpers.
"use strict";

const pacs = { studies: [], series: [], origin: null };

function pacsText(s) {
  return String(s == null ? "" : s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

function pacsDate(d) {
  return d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || "";
}

async function pacsSearch() {
  const patient = $("pacs-patient").value.trim();
  setStatus("searching the PACS\u2026", "busy");
  try {
    pacs.studies = await api(`/api/pacs/studies?patient=${encodeURIComponent(patient)}`);
    $("pacs-studies").innerHTML = pacs.studies.map((s) =>
      `<option value="${pacsText(s.study_instance_uid)}">${pacsText(pacsDate(s.study_date))} \u2014 ${pacsText(s.patient_name || s.patient_id || "?")}` +
      ` \u2014 ${pacsText(s.description || "(no description)")} [${pacsText(s.modalities.join(", "))}]</option>`).join("");
    $("pacs-series").innerHTML = "";
    setStatus(`${pacs.studies.length} stud${pacs.studies.length === 1 ? "y" : "ies"} in the PACS`, "idle");
  } catch (err) { fail(err); }
}

async function pacsShowSeries(study) {
  try {
    pacs.series = await api(`/api/pacs/studies/${encodeURIComponent(study)}/series`);
    $("pacs-series").innerHTML = pacs.series.map((s) =>
      `<option value="${pacsText(s.series_instance_uid)}"${s.image ? "" : ' class="non-image" disabled'}>` +
      `#${pacsText(s.number == null ? "?" : s.number)} ${pacsText(s.modality)} \u2014 ${pacsText(s.description || "(no description)")}` +
      ` (${pacsText(s.instances == null ? "?" : s.instances)} instances)${s.image ? "" : " \u2014 not an image"}</option>`).join("");
  } catch (err) { fail(err); }
}

async function pacsOpen() {
  const study = $("pacs-studies").value;
  const o = $("pacs-series").selectedOptions[0];
  if (!study || !o || o.disabled) { setStatus("pick a study and one of its image series first", "error"); return; }
  $("pacs").hidden = true;
  setStatus("fetching the series from the PACS\u2026", "busy");
  try {
    const info = await api("/api/pacs/open", { method: "POST", json: { study_instance_uid: study, series_instance_uid: o.value } });
    await openSession(info);
  } catch (err) { fail(err); }
}

async function pacsStore() {
  const s = state.session;
  if (!s || !pacs.origin) return;
  const format = $("pacs-format").value;
  setStatus("storing into the PACS\u2026", "busy");
  try {
    const r = await api(`/api/sessions/${s.id}/pacs/store`, { method: "POST", json: { format } });
    const list = await api(`/api/sessions/${s.id}/exports`);
    renderExports(list.exports.map((e) => e.name));
    setStatus(`stored ${r.kind} in the PACS and read it back (references ${r.referenced_instances} images of the series)`,
      "stored", { stored: r.sop_instance_uid });
  } catch (err) { fail(err); }
}

window.pacsSessionOpened = async (info) => {
  pacs.origin = null;
  $("pacs-export-row").hidden = true;
  if ($("pacs-button").hidden || info.dims !== "3d") return;
  try {
    pacs.origin = await api(`/api/sessions/${info.id}/pacs`);
    $("pacs-export-row").hidden = false;
  } catch (err) { if (err.status !== 404) fail(err); }
};

async function pacsInit() {
  let info;
  try { info = await api("/api/pacs"); } catch (err) { return; }
  if (!info.enabled) return;
  $("pacs-button").hidden = false;
  $("pacs-url").textContent = info.url;
  $("pacs-button").onclick = () => { $("pacs").hidden = false; if (!pacs.studies.length) pacsSearch(); };
  $("pacs-close").onclick = () => { $("pacs").hidden = true; };
  $("pacs-search").onclick = pacsSearch;
  $("pacs-patient").onkeydown = (ev) => { if (ev.key === "Enter") { ev.preventDefault(); pacsSearch(); } };
  $("pacs-studies").onchange = (ev) => pacsShowSeries(ev.target.value);
  $("pacs-series").ondblclick = pacsOpen;
  $("pacs-open").onclick = pacsOpen;
  $("pacs-store").onclick = pacsStore;
  if (state.session) window.pacsSessionOpened(state.session);
}

pacsInit();
