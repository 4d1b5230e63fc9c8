"use strict";
// The Stats page: the library report (`recap report`: signal histograms with thresholds, pass rates,
// camera motion, lengths, rejected examples), built by the server into LIB/.ui/report.
const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || res.statusText);
  return body;
}

function show(info) {
  const when = info.built_at ? new Date(info.built_at * 1000).toLocaleString() : "";
  const text = {none: "no report yet", building: "building the report…", ready: `report built ${when}`,
                error: "the report could not be built"}[info.state];
  $("report-state").textContent = text + (info.state === "building" && when ? ` (showing the one built ${when})` : "");
  $("error").hidden = info.state !== "error";
  $("error").textContent = info.message || "";
  if (info.url && (info.state === "ready" || $("report").hidden)) {
    $("report").hidden = false;
    $("report").src = `${info.url}?t=${info.built_at || 0}`;
  }
}

async function poll() {
  const info = await api("/api/report");
  show(info);
  if (info.state === "building") setTimeout(poll, 1500);
}

async function rebuild() {
  show(await api("/api/report", {method: "POST"}));
  setTimeout(poll, 1000);
}

async function main() {
  const s = await api("/api/status");
  $("library").textContent = `${s.library} · ${s.clips} clips · ${s.videos} videos`;
  $("notices").replaceChildren(...s.notices.map((n) => {
    const d = document.createElement("div");
    d.className = "notice";
    d.textContent = n.text + (n.run ? ` — run ${n.run}` : "");
    return d;
  }));
  $("rebuild").addEventListener("click", rebuild);
  const info = await api("/api/report");
  if (info.state === "none" && s.clips > 0) await rebuild(); else { show(info); if (info.state === "building") poll(); }
  document.body.dataset.ready = "1";
}

main().catch((e) => { $("error").hidden = false; $("error").textContent = e.message; });
