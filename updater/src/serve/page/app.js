// The technician's page: the API (docs/api.md) with the login's cookie,
// and its CSRF token on every change. Text from the device goes in with
// textContent only: release names and reasons are never markup.
"use strict";

let csrf = null;
const $ = (id) => document.getElementById(id);

function say(text, error) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "message error" : "message";
  m.hidden = !text;
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== "/v1/login") showLogin();
  if (!r.ok) {
    const why = data && data.error ? data.error : r.status + " " + r.statusText;
    throw new Error(why);
  }
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
}

function showLogin() {
  csrf = null;
  $("app").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-user").focus();
}

function showApp(user) {
  $("login").hidden = true;
  $("user").textContent = user;
  $("who").hidden = false;
  $("app").hidden = false;
  refresh();
}

let rollbackTo = null;
let fleetAction = null;

async function refresh() {
  try {
    const s = await api("GET", "/v1/status");
    const booted = s.slots.find((x) => x.name === s.booted);
    $("running").textContent = booted
      ? "Running " + (booted.version || "an unknown release") + " from " + s.booted + "; " + s.next + " boots next."
      : "The booted slot is not known; " + s.next + " boots next.";
    const body = $("slots").tBodies[0];
    body.replaceChildren();
    for (const x of s.slots) {
      const row = body.insertRow();
      cell(row, x.name);
      cell(row, x.version || "none");
      cell(row, x.priority);
      cell(row, x.tries);
      cell(row, x.successful ? "yes" : "no");
      cell(row, [x.name === s.booted ? "running" : "", x.name === s.next ? "boots next" : ""].filter(Boolean).join(", "));
    }
    $("floor").textContent = "Security floor: " + s.security_floor + (s.data_schema === null ? "" : "; data schema " + s.data_schema);
    const last = s.last_install;
    $("last-install").textContent = last
      ? "Last install: " + (last.version || "?") + " into " + last.slot + ", " + last.outcome + (last.reason ? " (" + last.reason + ")" : "")
      : "No install yet.";
    const warnings = $("warnings");
    warnings.replaceChildren();
    for (const w of s.warnings) {
      const li = document.createElement("li");
      li.className = "warn";
      li.textContent = w;
      warnings.appendChild(li);
    }
    $("activate").hidden = !(last && last.outcome === "ready");
    // The rollback goes to the other slot's release, once it proved
    // itself (a release on trial is not "back"), named here and in the
    // request, so that it cannot go elsewhere than shown.
    const other = s.slots.find((x) => x.name !== s.booted);
    rollbackTo = other && other.version && other.successful && s.booted ? other.version : null;
    $("rollback").hidden = !rollbackTo;
    $("rollback").textContent = rollbackTo ? "Roll back to " + rollbackTo : "";
    // An action the fleet server waits for someone here to confirm
    // (fleet.confirm: local), answered by its id.
    const asked = s.fleet_confirmation;
    fleetAction = asked ? asked.action : null;
    $("fleet").hidden = !asked;
    $("fleet-text").textContent = asked
      ? "The fleet server asks to install " + (asked.version || "a release") + " (action " + asked.action + "). Confirm it, and the server sends it; deny it, and nothing is installed."
      : "";
    const h = await api("GET", "/v1/history");
    const hist = $("history").tBodies[0];
    hist.replaceChildren();
    for (const e of h.slice().reverse()) {
      const row = hist.insertRow();
      cell(row, new Date(e.time * 1000).toLocaleString());
      cell(row, e.event);
      cell(row, e.slot);
      cell(row, e.version);
      cell(row, e.from_version);
      cell(row, e.reason);
    }
  } catch (e) {
    say(e.message, true);
  }
}

function progress(percent) {
  const p = Math.max(0, Math.min(100, Math.floor(percent)));
  if (p < $("progress").value) return;
  $("progress").value = p;
  $("percent").textContent = p + " %";
}

function check(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("checks").appendChild(li);
}

function install(event) {
  event.preventDefault();
  const file = $("bundle").files[0];
  if (!file) return;
  say("");
  $("progress").value = 0;
  $("percent").textContent = "0 %";
  $("checks").replaceChildren();
  $("install").disabled = true;
  // The install's own events: the checks as they pass, the bytes written.
  const events = new EventSource("/v1/events");
  // The install's reply and its events come on two connections: the reply
  // can be read before the last events sent ahead of it. Those are waited
  // for (a few seconds at most), so that no check goes unlisted.
  let ended = null;
  const lastEvent = new Promise((resolve) => { ended = resolve; });
  events.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.event === "ready" || e.event === "flipped" || e.event === "error") ended();
    if (e.event === "verified") check("Signature verified: " + e.compatible + " " + e.version + ", signed by " + e.signer + ", into " + e.slot);
    else if (e.event === "progress" && e.total > 0) progress((e.done / e.total) * 100);
    else if (e.event === "written") check("Written: " + e.bytes + " bytes to " + e.slot);
    else if (e.event === "read-back") check("Read back: " + e.slot + " matches the signed release");
    else if (e.event === "ready") check("Ready: " + e.version + " is kept in " + e.slot + " until you activate it");
    else if (e.event === "flipped") check("Activated: " + e.slot + " boots next, on trial (" + e.tries + " tries)");
  };
  const start = () => {
    const xhr = new XMLHttpRequest();
    const query = $("activate-now").checked ? "" : "?no_activate=1";
    xhr.open("POST", "/v1/install" + query);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.onload = async () => {
      if (xhr.status === 200) await Promise.race([lastEvent, new Promise((r) => setTimeout(r, 5000))]);
      events.close();
      $("install").disabled = false;
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (_) { data = null; }
      if (xhr.status === 200 && data) {
        progress(100);
        say("Installed " + data.version + " into " + data.slot + (data.activated ? "; it boots at the next reboot." : "; activate it when you choose."));
      } else {
        check("Refused: " + (data && data.error ? data.error : xhr.status));
        say("The install failed: " + (data && data.error ? data.error : xhr.status), true);
      }
      refresh();
    };
    xhr.onerror = () => {
      events.close();
      $("install").disabled = false;
      say("The upload was cut: the running release is untouched.", true);
      refresh();
    };
    xhr.send(file);
  };
  // Subscribed first, so that no check is missed.
  events.onopen = () => { if (!events.started) { events.started = true; start(); } };
  setTimeout(() => { if (!events.started) { events.started = true; start(); } }, 2000);
}

async function activate() {
  try {
    const r = await api("POST", "/v1/activate", {});
    say("Activated " + r.version + ": " + r.slot + " boots at the next reboot.");
  } catch (e) {
    say("Not activated: " + e.message, true);
  }
  refresh();
}

function askRollback() {
  if (!rollbackTo) return;
  $("confirm-text").textContent = "The machine boots " + rollbackTo + " at its next reboot, instead of what runs now.";
  $("confirm-yes").textContent = "Roll back to " + rollbackTo;
  $("confirm-yes").dataset.version = rollbackTo;
  $("confirm-rollback").showModal();
}

async function rollback() {
  $("confirm-rollback").close();
  try {
    const r = await api("POST", "/v1/rollback", { confirm: $("confirm-yes").dataset.version });
    say("Rolled back: " + r.version + " in " + r.slot + " boots at the next reboot.");
  } catch (e) {
    say("Not rolled back: " + e.message, true);
  }
  refresh();
}

async function answerFleet(confirmed) {
  if (!fleetAction) return;
  try {
    const r = await api("POST", "/v1/fleet/confirm", { action: fleetAction, confirmed });
    say(r.message.charAt(0).toUpperCase() + r.message.slice(1));
  } catch (e) {
    say("Not answered: " + e.message, true);
  }
  refresh();
}

async function reboot() {
  if (!window.confirm("Reboot the appliance now?")) return;
  try {
    await api("POST", "/v1/reboot", {});
    say("Rebooting: this page comes back when the appliance does.");
  } catch (e) {
    say("Not rebooted: " + e.message, true);
  }
}

async function login(event) {
  event.preventDefault();
  try {
    const r = await api("POST", "/v1/login", { user: $("login-user").value, password: $("login-password").value });
    $("login-password").value = "";
    csrf = r.csrf;
    say("");
    showApp(r.user);
  } catch (e) {
    say(e.message, true);
  }
}

async function logout() {
  try { await api("POST", "/v1/logout", {}); } catch (_) { /* gone anyway */ }
  showLogin();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("install-form").addEventListener("submit", install);
  $("activate").addEventListener("click", activate);
  $("rollback").addEventListener("click", askRollback);
  $("confirm-yes").addEventListener("click", rollback);
  $("confirm-no").addEventListener("click", () => $("confirm-rollback").close());
  $("reboot").addEventListener("click", reboot);
  $("fleet-confirm").addEventListener("click", () => answerFleet(true));
  $("fleet-deny").addEventListener("click", () => answerFleet(false));
  $("logout").addEventListener("click", logout);
  try {
    const s = await api("GET", "/v1/session");
    if (s.user) { csrf = s.csrf; showApp(s.user); } else showLogin();
  } catch (_) {
    showLogin();
  }
});
