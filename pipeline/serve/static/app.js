// recap serve: the clips page. Plain JS, no build step; everything comes from the JSON API (/docs).
"use strict";

const $ = (id) => document.getElementById(id);
const CAMERA = ["static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "shaky"];
const PAGE = 60;

const state = {
  q: "", like: null, mode: "auto", where: "", sort: "clip_id", desc: false, selection: null,
  offset: 0, total: 0, capped: false, items: [],
  picked: new Set(),      // clips chosen one by one
  allResults: null,       // or a whole result set (what "select all results" saves)
  status: null,
};

// ---- helpers -------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const d = body.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d || body));
  }
  return body;
}

const post = (path, body) => api(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});

function clock(s) {
  if (s === null || s === undefined) return "?";
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(2).padStart(5, "0")}`;
}

const num = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
const fileOffset = (c) => (c.file_start_frame || 0) / (c.fps || 25);
const mediaUrl = (id) => `/api/clips/${encodeURIComponent(id)}/media`;
const thumbUrl = (id) => `/api/clips/${encodeURIComponent(id)}/thumb`;

function showError(message) {
  const el = $("error");
  el.hidden = !message;
  el.textContent = message || "";
}

// ---- status, notices, fields -----------------------------------------------------------------------
async function loadStatus() {
  const s = await api("/api/status");
  state.status = s;
  $("library").textContent = `${s.library} · ${s.clips} clips · ${s.videos} videos`;
  const box = $("notices");
  box.replaceChildren(...s.notices.map((n) =>
    h("div", {class: "notice"}, n.text, n.run ? [" — run ", h("code", {}, n.run)] : [])));
  for (const opt of $("mode").options) {
    if (opt.value !== "auto") opt.disabled = !s.search_modes[opt.value];
  }
  renderSavedSelections(s.selections);
  return s;
}

async function loadFields() {
  const fields = await api("/api/fields");
  for (const el of document.querySelectorAll("[data-field]")) {
    const f = fields[el.dataset.field];
    const have = Boolean(f) && f.measured !== 0;
    el.classList.toggle("absent", !have);
    el.title = have ? "" : `no clip of this library has ${el.dataset.field} measured yet`;
    for (const input of el.querySelectorAll("input, select")) input.disabled = !have;
  }
  const classes = (fields.camera_motion && fields.camera_motion.values) || CAMERA;
  $("f-camera").replaceChildren(...classes.map((c) =>
    h("label", {class: "check"}, h("input", {type: "checkbox", value: c, class: "f-cam"}), c)));
  const videos = await api("/api/videos?limit=200");
  $("videos").replaceChildren(...videos.items.map((v) =>
    h("option", {value: v.video_id}, `${v.source || ""} (${v.clips} clips)`)));
}

function renderSavedSelections(names) {
  const box = $("saved-selections");
  if (!names || !names.length) { box.replaceChildren(); return; }
  box.replaceChildren("Saved selections: ", ...names.map((n) =>
    h("a", {href: "#", class: "sel-link", onclick: (e) => { e.preventDefault(); showSelection(n); }}, n)));
}

// ---- filters -> where --------------------------------------------------------------------------------
function filterSpec() {
  const val = (id) => { const v = $(id).value; return v === "" || $(id).disabled ? null : Number(v); };
  return {
    duration_min: val("f-duration_min"), duration_max: val("f-duration_max"),
    motion_min: val("f-motion_min"), motion_max: val("f-motion_max"),
    aesthetic_min: val("f-aesthetic_min"), aesthetic_max: val("f-aesthetic_max"),
    camera_motion: [...document.querySelectorAll(".f-cam:checked")].map((c) => c.value),
    ocr: $("f-ocr").disabled ? "any" : $("f-ocr").value,
    status: $("f-status").disabled ? "any" : $("f-status").value,
    duplicates: $("f-duplicates").disabled ? "any" : $("f-duplicates").value,
    video_id: $("f-video").value.trim() || null,
  };
}

async function applyFilters() {
  try {
    const {where} = await post("/api/where", filterSpec());
    $("where").value = where;
    state.where = where;
    state.offset = 0;
    await run();
  } catch (e) {
    showError(e.message);
  }
}

function resetFilters() {
  for (const el of document.querySelectorAll("#filters input")) {
    if (el.type === "checkbox") el.checked = false; else el.value = "";
  }
  for (const el of document.querySelectorAll("#filters select")) el.selectedIndex = 0;
  $("where").value = "";
  state.where = "";
  state.offset = 0;
  run();
}

// ---- results -------------------------------------------------------------------------------------
function query(extra) {
  const p = new URLSearchParams();
  if (state.where) p.set("where", state.where);
  if (state.q) { p.set("q", state.q); p.set("mode", state.mode); }
  if (state.like) { p.set("like", state.like); p.set("mode", state.mode); }
  if (!state.q && !state.like) {
    p.set("sort", state.sort);
    if (state.desc) p.set("desc", "true");
    if (state.selection) p.set("selection", state.selection);
  }
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p;
}

async function run() {
  showError("");
  const searching = Boolean(state.q || state.like);
  const p = query({offset: state.offset, limit: PAGE});
  $("grid").classList.add("loading");
  try {
    const page = await api(`/api/${searching ? "search" : "clips"}?${p}`);
    state.items = page.items;
    state.total = page.total;
    state.capped = page.capped;
    render();
  } catch (e) {
    showError(e.message);
    state.items = [];
    state.total = 0;
    render();
  } finally {
    $("grid").classList.remove("loading");
  }
}

function render() {
  const searching = Boolean(state.q || state.like);
  const first = state.total ? state.offset + 1 : 0;
  const last = state.offset + state.items.length;
  const what = searching ? (state.like ? "similar clips" : "hits") : "clips";
  $("summary").textContent = `${state.total}${state.capped ? "+" : ""} ${what}` +
      (state.where ? " matching the filter" : "") + (state.total ? ` · showing ${first}–${last}` : "");
  $("pageinfo").textContent = state.total ? `${Math.floor(state.offset / PAGE) + 1} / ${Math.max(1, Math.ceil(state.total / PAGE))}` : "";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
  $("sort-box").hidden = searching;
  $("like-banner").hidden = !state.like;
  $("like-id").textContent = state.like || "";
  $("selection-banner").hidden = !state.selection || searching;
  $("selection-shown").textContent = state.selection || "";
  $("grid").replaceChildren(...state.items.map(card));
  if (!state.items.length) {
    $("grid").append(h("p", {class: "muted empty"}, searching || state.where ? "No clip matches." : "No clips."));
  }
  renderPicked();
}

function badges(c) {
  const out = [];
  if (c.passed === true) out.push(h("span", {class: "badge ok"}, "passed"));
  if (c.passed === false) out.push(h("span", {class: "badge bad", title: (c.reject_reasons || []).join(", ")},
                                     "rejected: " + (c.reject_reasons || []).join(", ")));
  if (c.duplicate_of) out.push(h("span", {class: "badge dup", title: `kept instead: ${c.duplicate_of}`},
                                 `duplicate of ${c.duplicate_of.slice(0, 8)}`));
  if (c.camera_motion) out.push(h("span", {class: "badge"}, c.camera_motion));
  if (c.motion_score !== null && c.motion_score !== undefined) out.push(h("span", {class: "badge"}, `motion ${num(c.motion_score, 1)}`));
  if (c.aesthetic_score !== null && c.aesthetic_score !== undefined) out.push(h("span", {class: "badge"}, `aesthetic ${num(c.aesthetic_score, 1)}`));
  if (c.ocr_text) out.push(h("span", {class: "badge", title: c.ocr_text}, `text: ${c.ocr_text.slice(0, 24)}`));
  if (c.score !== undefined) out.push(h("span", {class: "badge score"}, `score ${num(c.score, 3)}`));
  return out;
}

function card(c) {
  const picked = state.allResults !== null || state.picked.has(c.clip_id);
  const box = h("input", {type: "checkbox", class: "pick", checked: picked, disabled: state.allResults !== null,
                          title: "select", onchange: (e) => togglePick(c.clip_id, e.target.checked)});
  const img = h("img", {src: thumbUrl(c.clip_id), loading: "lazy", alt: ""});
  const thumb = h("div", {class: "thumb", title: c.path ? "hover to preview, click to play" : "click for details"},
                  img, h("span", {class: "dur"}, `${num(c.duration_s, 1)} s`));
  img.addEventListener("error", () => img.replaceWith(h("div", {class: "nothumb"}, "no preview",
      h("small", {}, `${clock(c.start_s)}–${clock(c.end_s)}`))));
  if (c.path) {
    thumb.addEventListener("mouseenter", () => startPreview(thumb, c));
    thumb.addEventListener("mouseleave", () => stopPreview(thumb));
  }
  thumb.addEventListener("click", () => openClip(c.clip_id));
  return h("div", {class: "card" + (picked ? " picked" : ""), "data-id": c.clip_id},
    thumb,
    h("div", {class: "body"},
      h("div", {class: "top"}, h("label", {class: "check"}, box, h("code", {}, c.clip_id.slice(0, 12))),
        h("button", {class: "like", title: "more like this", onclick: () => moreLike(c.clip_id)}, "more like this")),
      h("div", {class: "caption", title: c.caption || ""}, c.caption || h("span", {class: "muted"}, "no caption")),
      h("div", {class: "meta"}, badges(c)),
      h("div", {class: "src muted", title: c.source || ""},
        `${(c.source || c.video_id || "").split("/").pop()} · ${clock(c.start_s)}–${clock(c.end_s)}`)));
}

function startPreview(thumb, c) {
  if (thumb.querySelector("video")) return;
  const v = h("video", {muted: true, loop: true, playsinline: true, preload: "auto", class: "preview"});
  v.muted = true;
  v.src = mediaUrl(c.clip_id);
  v.addEventListener("loadedmetadata", () => { v.currentTime = fileOffset(c); v.play().catch(() => {}); });
  thumb.append(v);
}

function stopPreview(thumb) {
  const v = thumb.querySelector("video");
  if (v) { v.pause(); v.removeAttribute("src"); v.load(); v.remove(); }
}

// ---- one clip -------------------------------------------------------------------------------------
async function openClip(id) {
  let c;
  try {
    c = await api(`/api/clips/${encodeURIComponent(id)}`);
  } catch (e) {
    showError(e.message);
    return;
  }
  const rows = Object.entries(c).filter(([k, v]) => !["captions", "duplicate_group", "reject_reasons", "caption"].includes(k)
                                                    && v !== null && typeof v !== "object");
  let media;
  if (c.path) {
    media = h("video", {id: "player", controls: true, autoplay: true, muted: true, playsinline: true, preload: "auto"});
    media.muted = true;
    media.src = mediaUrl(c.clip_id);
    media.addEventListener("loadedmetadata", () => {
      const start = fileOffset(c);
      if (start > 0) media.currentTime = start;
      media.play().catch(() => {});
    });
  } else {
    const remote = /^https?:\/\//.test(c.source || "");
    media = h("div", {class: "noplay"},
      h("p", {}, "A reference clip: it has no file of its own, and its source video is outside the library (not served)."),
      h("p", {}, "Source: ", remote ? h("a", {href: `${c.source}#t=${c.start_s}`, target: "_blank", rel: "noopener"}, c.source)
                                     : h("code", {}, c.source || c.video_id)),
      h("p", {}, `From ${clock(c.start_s)} to ${clock(c.end_s)} (frames ${c.start_frame}–${c.end_frame}).`),
      h("img", {src: thumbUrl(c.clip_id), alt: "", onerror: (e) => e.target.remove()}));
  }
  const caps = (c.captions || []).map((v) => h("div", {class: "capver"},
    h("div", {class: "muted"}, h("code", {}, v.version), ` ${v.model_id} · ${v.prompt_id} · ${v.status}`,
      v.reason ? ` (${v.reason})` : "", v.default ? " · default" : ""),
    h("div", {}, v.text || h("span", {class: "muted"}, "(empty)"))));
  const group = c.duplicate_group;
  const body = h("div", {},
    h("div", {class: "modal-head"}, h("h2", {}, h("code", {}, c.clip_id)),
      h("button", {onclick: () => { closeModal(); moreLike(c.clip_id); }}, "more like this"),
      h("label", {class: "check"}, h("input", {type: "checkbox", checked: state.picked.has(c.clip_id),
        onchange: (e) => togglePick(c.clip_id, e.target.checked)}), "selected")),
    media,
    h("p", {}, "Source ", h("code", {}, c.source || c.video_id), ` · ${clock(c.start_s)}–${clock(c.end_s)}`,
      c.path ? [" · file ", h("a", {href: mediaUrl(c.clip_id), target: "_blank"}, c.path)] : []),
    h("h3", {}, "Filter view"),
    h("p", {}, c.passed === null || c.passed === undefined ? "not judged (run recap filter)" :
      c.passed ? "passed" : `rejected: ${(c.reject_reasons || []).join(", ")}`),
    group ? h("p", {}, "Duplicate group (kept: ", h("a", {href: "#", onclick: (e) => { e.preventDefault(); openClip(group.kept); }},
      group.kept.slice(0, 12)), "): ", group.members.filter((m) => m !== group.kept).map((m) =>
      h("a", {href: "#", class: "sel-link", onclick: (e) => { e.preventDefault(); openClip(m); }}, m.slice(0, 12)))) : "",
    h("h3", {}, `Captions (${caps.length} versions)`), caps.length ? caps : h("p", {class: "muted"}, "none yet"),
    h("h3", {}, "Signals and facts"),
    h("table", {class: "kv"}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k),
      h("td", {}, typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v))))));
  $("modal-body").replaceChildren(body);
  $("modal").hidden = false;
}

function closeModal() {
  const v = document.querySelector("#modal video");
  if (v) { v.pause(); v.removeAttribute("src"); v.load(); }
  $("modal").hidden = true;
  $("modal-body").replaceChildren();
}

function moreLike(id) {
  state.like = id;
  state.q = "";
  $("q").value = "";
  state.offset = 0;
  run();
}

function showSelection(name) {
  state.selection = name;
  state.q = "";
  state.like = null;
  $("q").value = "";
  state.offset = 0;
  run();
}

// ---- selection ----------------------------------------------------------------------------------
function togglePick(id, on) {
  if (on) state.picked.add(id); else state.picked.delete(id);
  const el = document.querySelector(`.card[data-id="${id}"]`);
  if (el) { el.classList.toggle("picked", on); el.querySelector(".pick").checked = on; }
  renderPicked();
}

function renderPicked() {
  $("selected-count").textContent = state.allResults !== null
    ? `all ${state.total}${state.capped ? "+" : ""} results selected` : `${state.picked.size} selected`;
}

async function saveSelection() {
  const name = $("selection-name").value.trim();
  const body = {name, append: $("selection-append").checked};
  if (state.allResults !== null) body.results = state.allResults; else body.clip_ids = [...state.picked];
  try {
    const r = await post("/api/selections", body);
    $("saved").replaceChildren(`saved ${r.count} clips as ${r.name} — export: `, h("code", {}, r.export));
    await loadStatus();
  } catch (e) {
    $("saved").textContent = "";
    showError(e.message);
  }
}

// ---- wiring -------------------------------------------------------------------------------------------
function wire() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.q = $("q").value.trim();
    state.like = null;
    state.mode = $("mode").value;
    state.offset = 0;
    run();
  });
  $("clear-search").addEventListener("click", () => { state.q = ""; state.like = null; $("q").value = ""; state.offset = 0; run(); });
  $("clear-like").addEventListener("click", () => { state.like = null; state.offset = 0; run(); });
  $("clear-selection-view").addEventListener("click", () => { state.selection = null; state.offset = 0; run(); });
  $("mode").addEventListener("change", () => { state.mode = $("mode").value; if (state.q || state.like) { state.offset = 0; run(); } });
  $("apply-where").addEventListener("click", () => { state.where = $("where").value.trim(); state.offset = 0; run(); });
  $("where").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("apply-where").click(); }
  });
  $("apply-filters").addEventListener("click", applyFilters);
  $("reset-filters").addEventListener("click", resetFilters);
  $("sort").addEventListener("change", () => { state.sort = $("sort").value; state.offset = 0; run(); });
  $("desc").addEventListener("change", () => { state.desc = $("desc").checked; state.offset = 0; run(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); run(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; run(); });
  $("select-page").addEventListener("click", () => { state.allResults = null; state.items.forEach((c) => state.picked.add(c.clip_id)); render(); });
  $("select-all").addEventListener("click", () => {
    state.picked.clear();
    state.allResults = {where: state.where || null, q: state.q || null, like: state.like, mode: state.mode,
                        selection: state.q || state.like ? null : state.selection};
    render();
  });
  $("select-none").addEventListener("click", () => { state.picked.clear(); state.allResults = null; render(); });
  $("save-selection").addEventListener("click", saveSelection);
  $("modal-close").addEventListener("click", closeModal);
  $("modal").addEventListener("click", (e) => { if (e.target === $("modal")) closeModal(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("modal").hidden) closeModal(); });
}

async function main() {
  wire();
  // the first results page does not wait for the status and the filter fields
  const side = Promise.all([loadStatus(), loadFields()]).catch((e) => showError(e.message));
  await Promise.all([run(), side]);
  document.body.dataset.ready = "1";
}

main();
