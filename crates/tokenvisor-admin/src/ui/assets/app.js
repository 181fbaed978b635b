// tokenvisor dashboard: relative times, confirmations, copy buttons and the live status of
// a connection page. No inline script anywhere (the content security policy forbids it).
"use strict";

function relative(at) {
  const seconds = Math.round((at - Date.now()) / 1000);
  const magnitude = Math.abs(seconds);
  let amount;
  if (magnitude < 60) amount = magnitude + " s";
  else if (magnitude < 3600) amount = Math.floor(magnitude / 60) + " min";
  else if (magnitude < 172800) amount = Math.floor(magnitude / 3600) + " h";
  else amount = Math.floor(magnitude / 86400) + " d";
  return seconds >= 0 ? "in " + amount : amount + " ago";
}

function refreshTimes(root) {
  for (const time of root.querySelectorAll("time[data-relative]")) {
    const at = Date.parse(time.getAttribute("datetime"));
    if (!Number.isNaN(at)) time.textContent = relative(at);
  }
}

function timeElement(iso) {
  if (!iso) return document.createTextNode("—");
  const time = document.createElement("time");
  time.setAttribute("datetime", iso);
  time.setAttribute("title", iso);
  time.setAttribute("data-relative", "");
  time.textContent = relative(Date.parse(iso));
  return time;
}

function badge(status) {
  const span = document.createElement("span");
  span.className = "badge " + status;
  span.textContent = status.replace("_", " ");
  return span;
}

// Asks before submitting the forms that say so.
function bindConfirmations(root) {
  for (const form of root.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  }
}

// Replaces the action buttons with those the server renders for the new status (the
// page itself is not reloaded).
async function refreshActions(pageUrl) {
  const current = document.querySelector("section.actions");
  if (!current) return;
  try {
    const response = await fetch(pageUrl, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.querySelector("section.actions");
    if (fresh) {
      const adopted = document.importNode(fresh, true);
      current.replaceWith(adopted);
      bindConfirmations(adopted);
    }
  } catch (_) { /* the buttons stay as they were */ }
}

// Polls the connection's status and updates the page without reloading it.
function followStatus(list) {
  const url = list.getAttribute("data-live-status");
  let last = null;
  // The status the actions were rendered for.
  let actionsFor = list.getAttribute("data-status");
  const tick = async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
      if (response.ok) {
        const state = await response.json();
        const key = JSON.stringify(state);
        if (key !== last) {
          const changed = state.status !== actionsFor;
          last = key;
          actionsFor = state.status;
          // The connection's page (this one may be the answer to an action's POST).
          if (changed) refreshActions(url.replace(/\/status$/, ""));
          document.getElementById("status").replaceChildren(badge(state.status));
          document.getElementById("expires").replaceChildren(timeElement(state.expires_at));
          document.getElementById("next-refresh").replaceChildren(timeElement(state.next_refresh_at));
        }
      }
    } catch (_) { /* the next tick tries again */ }
  };
  setInterval(tick, 2000);
}

// Re-reads a table row's status, expiry and next refresh (after an event about it).
async function refreshRow(row) {
  try {
    const response = await fetch(row.getAttribute("data-status-url"), {
      credentials: "same-origin", headers: { accept: "application/json" },
    });
    if (!response.ok) return;
    const state = await response.json();
    row.querySelector("td.status").replaceChildren(badge(state.status));
    row.querySelector("td.expires").replaceChildren(timeElement(state.expires_at));
    row.querySelector("td.next-refresh").replaceChildren(timeElement(state.next_refresh_at));
    row.classList.add("changed");
  } catch (_) { /* the next event tries again */ }
}

const EVENT_TYPES = ["refreshed", "refresh_failed", "needs_reauthorization", "recovered", "deactivated",
  "activated", "reauthorized", "connected", "removed"];

// Follows the page's connections on the event stream (/ui/events, the session's cookie).
function followEvents(element, onEvent) {
  const source = new EventSource(element.getAttribute("data-live-events"));
  // Marks the element while the stream is open (tests and styles can see it).
  source.addEventListener("open", () => element.setAttribute("data-live-open", ""));
  source.addEventListener("error", () => element.removeAttribute("data-live-open"));
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      try { onEvent(type, JSON.parse(message.data)); } catch (_) { /* not an event */ }
    });
  }
  window.addEventListener("pagehide", () => source.close());
  return source;
}

function followTable(table) {
  followEvents(table, (_type, event) => {
    const row = table.querySelector(`tr[data-connection="${event.connection_id}"]`);
    if (row) refreshRow(row);
  });
}

function followConnectionEvents(list) {
  followEvents(list, (type, event) => {
    const item = document.createElement("li");
    item.appendChild(timeElement(event.at));
    item.appendChild(document.createTextNode(" " + type.replaceAll("_", " ")));
    if (event.code) {
      const code = document.createElement("code");
      code.textContent = event.code;
      item.appendChild(document.createTextNode(" "));
      item.appendChild(code);
    }
    list.prepend(item);
    const empty = document.getElementById("live-events-empty");
    if (empty) empty.remove();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  refreshTimes(document);
  setInterval(() => refreshTimes(document), 1000);
  bindConfirmations(document);
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const input = document.getElementById(button.getAttribute("data-copy"));
      input.select();
      try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
      catch (_) { document.execCommand("copy"); button.textContent = "Copied"; }
    });
  }
  const live = document.querySelector("[data-live-status]");
  if (live) followStatus(live);
  const table = document.querySelector("table#connections[data-live-events]");
  if (table) followTable(table);
  const events = document.querySelector("ol#live-events[data-live-events]");
  if (events) followConnectionEvents(events);
});
