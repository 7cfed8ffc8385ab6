// sinkhole dashboard: the live attempts log (server-sent events) and clickable chart bars.
// Served from 'self' under a Content-Security-Policy without inline script.
"use strict";

function liveLog() {
  const state = document.getElementById("live-state");
  const rows = document.getElementById("attempt-rows");
  if (!state || !rows || !state.dataset.live || !window.EventSource) return;
  const source = new EventSource(state.dataset.live);
  source.addEventListener("attempt", (event) => {
    // The row was rendered (and escaped) by the server's template.
    const id = event.lastEventId;
    if (id && rows.querySelector(`tr[data-id="${CSS.escape(id)}"]`)) return;
    rows.insertAdjacentHTML("afterbegin", event.data);
    const empty = document.getElementById("no-attempts");
    if (empty) empty.remove();
    while (rows.rows.length > 1000) rows.deleteRow(rows.rows.length - 1);
  });
  source.addEventListener("open", () => state.classList.add("connected"));
  source.addEventListener("error", () => state.classList.remove("connected"));
}

function dayAfter(isoDate) {
  const d = new Date(`${isoDate}T12:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

function chartClicks() {
  document.addEventListener("click", (event) => {
    const bar = event.target.closest && event.target.closest("rect.bar");
    if (!bar) return;
    const box = bar.closest(".chart-box");
    const params = new URLSearchParams();
    if (bar.dataset.date) {
      params.set("since", bar.dataset.date);
      params.set("until", dayAfter(bar.dataset.date));
    } else if (bar.dataset.start) {
      params.set("since", new Date(Number(bar.dataset.start) * 1000).toISOString());
      params.set("until", new Date(Number(bar.dataset.end) * 1000).toISOString());
    } else if (bar.dataset.service) {
      params.set("service", bar.dataset.service);
      if (box && box.dataset.since) params.set("since", box.dataset.since);
      if (box && box.dataset.until) params.set("until", box.dataset.until);
    } else {
      return;
    }
    window.location.assign(`/attempts?${params}`);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveLog();
  chartClicks();
});
