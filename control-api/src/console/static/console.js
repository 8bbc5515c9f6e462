// The EdgeMesh console's only script (served from /ui/static/; the pages work without it, except the
// live feed, which it fills). Everything a device wrote is put in the page as text, never as HTML.
"use strict";

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function startLiveFeed(table) {
  const body = table.tBodies[0];
  const deviceInput = document.getElementById("live-device");
  const decisionInput = document.getElementById("live-decision");
  const state = document.getElementById("live-state");
  let source = null;

  function connect() {
    if (source) source.close();
    const query = new URLSearchParams();
    if (deviceInput.value.trim()) query.set("device", deviceInput.value.trim());
    if (decisionInput.value) query.set("decision", decisionInput.value);
    body.replaceChildren();
    source = new EventSource(table.dataset.source + "?" + query.toString());
    source.onopen = () => { state.textContent = "live"; };
    source.onerror = () => { state.textContent = "reconnecting…"; };
    source.addEventListener("decision", (event) => {
      const d = JSON.parse(event.data);
      const row = document.createElement("tr");
      row.dataset.id = d.id;
      row.append(
        cell(d.occurred_at),
        cell(d.device),
        cell(d.decision, "decision-" + (d.decision === "allow" ? "allow" : "deny")),
        cell(d.service),
        cell(d.request),
        cell((d.reasons || []).join("; ")),
      );
      body.prepend(row);
      while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
    });
  }

  document.getElementById("live-filters").addEventListener("submit", (e) => { e.preventDefault(); connect(); });
  deviceInput.addEventListener("change", connect);
  decisionInput.addEventListener("change", connect);
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) startLiveFeed(live);
});
