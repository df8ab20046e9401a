// The admin console: hash-routed pages over the public API (api.js). No framework: the DOM is
// built with createElement and textContent only (never innerHTML), so that nothing the API
// returns (account names, PBX reasons) can become markup; the CSP forbids inline code anyway.

import * as api from "./api.js";
import { STATES, stateWords, reasonWords, stepWords, when, duration } from "./words.js";

const $ = (id) => document.getElementById(id);

/** Polling period of the live pages (ms): links, associations, an association. */
const POLL_MS = 1000;
/** Samples kept per PBX for its events-per-second sparkline (one a poll: about a minute). */
const SPARK_SAMPLES = 60;
/** PBXs whose samples are kept (the gateway's PBX list bounds it; this is the last guard). */
const MAX_PBX_TRACKED = 256;
/** Events kept on screen while following an extension's event stream. */
const MAX_EVENTS_SHOWN = 200;

// ---- DOM helpers -------------------------------------------------------------------------

/** An element: `attrs` are attributes (`text` sets its text, `on*` functions listen), the
 * rest children (strings become text nodes; null and false are skipped). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = String(v);
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** Children for replaceChildren: nested lists flattened, null, undefined and false left out. */
function kids(...xs) {
  return xs.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

/** A labelled input: [label, input], the label's `for` naming the input. */
function field(id, label, attrs) {
  return el("div", { class: "field" }, el("label", { for: id, text: label }), el("input", { id, name: id, autocomplete: "off", spellcheck: "false", ...attrs }));
}

function table(caption, headers, rows, attrs) {
  return el("div", { class: "scroll" },
    el("table", attrs || {},
      el("caption", { class: "visually-hidden", text: caption }),
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows)));
}

// ---- messages ----------------------------------------------------------------------------

function say(msg) {
  $("status").textContent = msg;
}

function clearError() {
  $("error").textContent = "";
}

/** Show a failure in the alert region: the API's own message and status. */
function showError(e, what) {
  let msg;
  if (e instanceof api.ApiError) {
    msg = e.status === 403 ? `${what || document.title.split(" · ")[0]}: not allowed with this token; the gateway answered: ${e.message} (HTTP 403).`
      : e.status === 401 ? `${what ? what + ": " : ""}the gateway refused the token: ${e.message} (HTTP 401).`
      : `${what ? what + ": " : ""}${e.message}${e.status ? ` (HTTP ${e.status})` : ""}.`;
  } else {
    msg = `${what ? what + ": " : ""}the gateway did not answer (${e && e.message ? e.message : e}).`;
  }
  $("error").textContent = msg;
}

// A violation of the page's CSP would mean the console itself breaks its policy: say so (the
// browser tests check none happens).
let cspViolations = 0;
document.addEventListener("securitypolicyviolation", (e) => {
  cspViolations += 1;
  document.body.dataset.cspViolations = String(cspViolations);
  $("error").textContent = `Content Security Policy violation: ${e.violatedDirective}`;
});

// ---- page lifecycle ----------------------------------------------------------------------

/** What to stop when leaving the page: timers, event streams. */
let cleanups = [];

function leave() {
  for (const f of cleanups) f();
  cleanups = [];
}

/** Run `fn` now and every `ms` after it finishes, until the page is left. Failures are shown
 * and polling goes on (a restarting gateway comes back); a 401 logs out. */
function every(ms, fn) {
  let alive = true;
  let timer;
  const tick = async () => {
    if (!alive) return;
    try {
      await fn();
    } catch (e) {
      if (!alive) return;
      if (e instanceof api.ApiError && e.status === 401) return expired(e);
      showError(e);
    }
    if (alive) timer = setTimeout(tick, ms);
  };
  cleanups.push(() => { alive = false; clearTimeout(timer); });
  tick();
}

/** The token stopped working (a reload changed it): back to the login, saying why. */
function expired(e) {
  api.forget();
  route();
  showError(e, "Logged out");
}

/** A page: its section emptied, a heading focused for screen readers and keyboard users. */
function page(title, ...children) {
  const sec = $("page");
  sec.replaceChildren(...kids(el("h1", { id: "page-title", tabindex: "-1", text: title }), children));
  sec.hidden = false;
  document.title = `${title} · cstagate console`;
  return sec;
}

function isAdmin() {
  return api.role() === "admin";
}

// ---- routing -----------------------------------------------------------------------------

const PAGES = {
  links: linksPage,
  associations: associationsPage,
  bindings: bindingsPage,
  audit: auditPage,
  limits: limitsPage,
  directory: directoryPage,
};

function route() {
  leave();
  clearError();
  say("");
  const loggedIn = !!api.token();
  $("nav").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  $("who").hidden = !loggedIn;
  $("login").hidden = loggedIn;
  if (!loggedIn) {
    $("page").hidden = true;
    $("page").replaceChildren();
    document.title = "Log in · cstagate console";
    return;
  }
  const admin = isAdmin();
  $("who").textContent = admin ? "admin" : "tenant";
  for (const li of document.querySelectorAll("#nav [data-admin]")) li.hidden = !admin;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  let name = parts[0];
  if (!PAGES[name]) name = admin ? "links" : "associations";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  PAGES[name](parts.slice(1));
  const h = $("page-title");
  if (h && document.activeElement !== $("token")) h.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);

// The skip link moves the focus to the content; as a plain `#main` link it would change the
// route.
document.querySelector(".skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  ($("page-title") || $("main")).focus();
});

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearError();
  const input = $("token");
  const tok = input.value.trim();
  if (!tok) {
    $("error").textContent = "Log in: paste a token first.";
    input.focus();
    return;
  }
  $("login-button").disabled = true;
  try {
    const r = await api.login(tok);
    input.value = "";
    say(`Logged in with the ${r} token.`);
    const want = location.hash.replace(/^#\/?/, "").split("/")[0];
    if (!PAGES[want]) location.hash = r === "admin" ? "#/links" : "#/associations";
    route();
  } catch (e) {
    showError(e, "Login refused");
    input.select();
  } finally {
    $("login-button").disabled = false;
  }
});

$("logout").addEventListener("click", () => {
  api.forget();
  location.hash = "#/login";
  route();
  say("Logged out: the token is forgotten.");
  $("token").focus();
});

// ---- PBX links ---------------------------------------------------------------------------

/** Per PBX: events_in samples for the sparkline, and when this console first saw it up. */
const samples = new Map();

function sample(id, at, eventsIn, up) {
  let s = samples.get(id);
  if (!s) {
    if (samples.size >= MAX_PBX_TRACKED) samples.delete(samples.keys().next().value);
    s = { points: [], upSince: null, seenDown: false };
    samples.set(id, s);
  }
  s.points.push({ at, eventsIn });
  if (s.points.length > SPARK_SAMPLES + 1) s.points.shift();
  if (up && s.upSince === null) s.upSince = at;
  if (!up) { s.upSince = null; s.seenDown = true; }
  return s;
}

/** Events per second between consecutive samples. */
function rates(s) {
  const out = [];
  for (let i = 1; i < s.points.length; i++) {
    const a = s.points[i - 1], b = s.points[i];
    const dt = (b.at - a.at) / 1000;
    out.push(dt > 0 ? Math.max(0, b.eventsIn - a.eventsIn) / dt : 0);
  }
  return out;
}

function sparkline(values) {
  const w = 180, h = 36;
  const max = Math.max(1, ...values);
  const now = values.length ? values[values.length - 1] : 0;
  const s = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img", "aria-label": `events per second over the last minute; now ${now.toFixed(1)}, at most ${max.toFixed(1)}` });
  s.append(svg("line", { x1: 0, y1: h - 1, x2: w, y2: h - 1, class: "axis" }));
  if (values.length > 1) {
    const step = w / (SPARK_SAMPLES - 1);
    const x0 = w - step * (values.length - 1);
    const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { points: pts, class: "line" }));
  }
  return s;
}

const COUNTERS = [
  ["frames_in", "frames in"], ["frames_out", "frames out"], ["events_in", "events in"],
  ["events_dropped", "events dropped"], ["decode_errors", "decode errors"], ["connects", "connects"],
  ["reconnects", "reconnects"], ["requests_ok", "requests ok"], ["requests_failed", "requests failed"],
  ["requests_timed_out", "requests timed out"], ["latency_avg_us", "latency avg (µs)"], ["monitors", "monitors"],
  ["tls_failures", "TLS failures"],
];

function linkCard(p, s) {
  const st = p.state && p.state.state ? p.state.state : "unknown";
  const up = st === "up";
  const r = rates(s);
  const now = r.length ? r[r.length - 1] : 0;
  const seconds = s.upSince === null ? null : (Date.now() - s.upSince) / 1000;
  const uptime = !up ? "not up" : seconds === null ? "" : s.seenDown ? `up for ${duration(seconds)}` : `up for at least ${duration(seconds)}`;
  const stats = p.stats || {};
  return el("article", { class: "card", "data-pbx": p.id },
    el("h2", {}, p.id, " ", el("span", { class: "badge", "data-state": st, text: st })),
    p.state && p.state.reason ? el("p", { class: "reason", text: p.state.reason }) : null,
    el("p", { class: "uptime", title: "as seen by this console since it opened the page", text: uptime }),
    p.owner !== undefined ? el("p", { class: "owner" }, "Owner instance: ", el("strong", { text: p.owner }), p.epoch !== undefined ? ` (lease epoch ${p.epoch})` : "") : null,
    el("div", { class: "rate" }, sparkline(r), el("span", { text: `${now.toFixed(1)} events/s` })),
    el("dl", { class: "counters" }, COUNTERS.filter(([k]) => stats[k] !== undefined).map(([k, label]) => [el("dt", { text: label }), el("dd", { "data-counter": k, text: stats[k] })])),
    p.directory ? el("p", { class: "hint", text: `Directory: ${p.directory.entries} ${p.directory.entries === 1 ? "entry" : "entries"}` }) : null);
}

function linksPage() {
  const cards = el("div", { class: "cards", id: "links" });
  const leases = el("div", { id: "leases" });
  page("PBX links", el("p", { class: "hint", text: "Each PBX link's state and counters, refreshed every second; the line is the events per second received over the last minute. Uptime is as this console has seen it." }), cards, leases);
  let last = "";
  every(POLL_MS, async () => {
    const v = await api.call("GET", "/v1/pbx");
    const at = Date.now();
    const list = Array.isArray(v.pbx) ? v.pbx : [];
    cards.replaceChildren(...list.map((p) => linkCard(p, sample(String(p.id), at, Number(p.stats && p.stats.events_in) || 0, p.state && p.state.state === "up"))));
    if (!list.length) cards.append(el("p", { text: "No PBX is configured." }));
    const ls = Array.isArray(v.leases) ? v.leases : null;
    const key = JSON.stringify(ls);
    if (key !== last) {
      last = key;
      leases.replaceChildren(...(ls ? [el("h2", { text: "Leases (cluster)" }), table("PBX leases", ["PBX", "Owner", "Epoch", "Live"], ls.map((l) => el("tr", {}, el("td", { text: l.pbx }), el("td", { text: l.owner }), el("td", { text: l.epoch }), el("td", { text: l.live ? "yes" : "no" }))))] : []));
    }
    clearError();
  });
}

// ---- associations ------------------------------------------------------------------------

const FINAL = new Set(["bound", "failed", "expired", "cancelled"]);

function assocLink(id) {
  return el("a", { href: `#/associations/${encodeURIComponent(id)}`, class: "mono", text: id });
}

function associationsPage(rest) {
  if (rest.length && rest[0]) return associationPage(rest[0]);
  const state = el("select", { id: "f-state", name: "f-state" }, el("option", { value: "", text: "any" }), Object.keys(STATES).map((s) => el("option", { value: s, text: s.replace(/_/g, " ") })));
  const form = el("form", { class: "filters", id: "assoc-filters" },
    el("div", { class: "field" }, el("label", { for: "f-state", text: "State" }), state),
    field("f-extension", "Extension", { inputmode: "tel" }),
    field("f-account", "Account", {}),
    field("f-limit", "At most", { type: "number", min: "1", max: "1000", value: "100" }),
    el("button", { type: "submit", text: "Apply" }));
  const summary = el("p", { id: "assoc-summary", class: "summary" });
  const body = el("tbody", {});
  const tbl = el("div", { class: "scroll" }, el("table", { id: "assoc-table" },
    el("caption", { class: "visually-hidden", text: "Associations, newest first" }),
    el("thead", {}, el("tr", {}, ["Association", "Account", "PBX", "Extension", "State", "Why", "Expires"].map((h) => el("th", { scope: "col", text: h })))),
    body));
  page("Associations", el("p", { class: "hint", text: "Live and recent associations, newest first, refreshed every second." }), form, summary, tbl);
  let filter = {};
  let last = "";
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    filter = { state: state.value, extension: $("f-extension").value, account: $("f-account").value, limit: $("f-limit").value };
    last = "";
  });
  every(POLL_MS, async () => {
    const v = await api.call("GET", "/v1/associations" + api.query(filter));
    const list = Array.isArray(v.associations) ? v.associations : [];
    const key = JSON.stringify(list);
    if (key !== last) {
      last = key;
      body.replaceChildren(...list.map((a) => el("tr", { "data-id": a.id },
        el("td", {}, assocLink(a.id)), el("td", { text: a.account }), el("td", { text: a.pbx }), el("td", { text: a.extension }),
        el("td", { "data-state": a.state, title: stateWords(a.state) }, el("span", { class: "badge", "data-state": a.state, text: a.state.replace(/_/g, " ") })),
        el("td", { text: a.reason ? reasonWords(a.reason) : "" }),
        el("td", { text: FINAL.has(a.state) ? "" : when(a.expires_at) }))));
      const live = list.filter((a) => !FINAL.has(a.state)).length;
      summary.dataset.count = String(list.length);
      summary.textContent = `${list.length} association${list.length === 1 ? "" : "s"}, ${live} in progress.`;
    }
    clearError();
  });
}

function associationPage(id) {
  const head = el("div", { id: "assoc-head" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  page(`Association ${id}`, el("p", {}, el("a", { href: "#/associations", text: "← All associations" })), head, el("h2", { text: "History" }), timeline);
  let last = "";
  every(POLL_MS, async () => {
    const a = await api.call("GET", `/v1/associations/${api.seg(id)}`);
    const key = JSON.stringify(a);
    if (key === last) return;
    last = key;
    head.replaceChildren(...kids(
      el("p", { class: "big" }, el("span", { class: "badge", "data-state": a.state, id: "assoc-state", text: a.state.replace(/_/g, " ") }), " ", stateWords(a.state)),
      a.reason ? el("p", { id: "assoc-reason", class: "reason", "data-reason": a.reason }, reasonWords(a.reason), a.retryable ? " The user may try again." : " This is final.") : null,
      el("dl", { class: "facts" },
        el("dt", { text: "Account" }), el("dd", { text: a.account }),
        el("dt", { text: "PBX" }), el("dd", { text: a.pbx }),
        el("dt", { text: "Extension" }), el("dd", { text: a.extension }),
        el("dt", { text: "Code expires" }), el("dd", { text: when(a.expires_at) }))));
    const steps = Array.isArray(a.history) ? a.history : [];
    timeline.replaceChildren(...steps.map((s) => el("li", { "data-step": s.step },
      el("time", { datetime: new Date(s.at).toISOString(), text: when(s.at) }), " ",
      el("strong", { text: stepWords(s.step) }), s.detail ? el("span", { class: "detail", text: ` ${s.detail}` }) : null)));
    clearError();
  });
}

// ---- bindings ----------------------------------------------------------------------------

function bindingsPage() {
  const results = el("div", { id: "binding-results", "aria-live": "polite" });
  const events = el("div", { id: "binding-events" });
  const one = el("form", { class: "filters", id: "binding-one" },
    field("b-pbx", "PBX", { required: true }), field("b-extension", "Extension", { inputmode: "tel", required: true }),
    el("button", { type: "submit", text: "Find the binding" }));
  const byAccount = isAdmin() ? null : el("form", { class: "filters", id: "binding-account" },
    field("b-account", "Account", { required: true }), el("button", { type: "submit", text: "List the account's bindings" }));
  page("Bindings", el("p", { class: "hint", text: isAdmin() ? "Find the binding of an extension; unbind it." : "Find the binding of an extension, or list an account's; unbind them, or follow an extension's live events." }), one, byAccount, results, events);

  let lastSearch = null;
  const show = (list) => {
    if (!list.length) {
      results.replaceChildren(el("p", { id: "binding-none", text: "No binding found." }));
      return;
    }
    results.replaceChildren(table("Bindings", ["Account", "PBX", "Extension", "Calling number", "Bound at", ""], list.map((b) => bindingRow(b, events, () => lastSearch && lastSearch())), { id: "binding-table" }));
  };
  one.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const pbx = $("b-pbx").value.trim(), ext = $("b-extension").value.trim();
    lastSearch = async () => {
      clearError();
      try {
        show([await api.call("GET", `/v1/bindings/${api.seg(pbx)}/${api.seg(ext)}`)]);
      } catch (e) {
        if (e instanceof api.ApiError && e.status === 404) show([]);
        else { results.replaceChildren(); showError(e, "Bindings"); }
      }
    };
    lastSearch();
  });
  if (byAccount) byAccount.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const account = $("b-account").value.trim();
    lastSearch = async () => {
      clearError();
      try {
        const v = await api.call("GET", "/v1/bindings" + api.query({ account }));
        show(Array.isArray(v.bindings) ? v.bindings : []);
      } catch (e) { results.replaceChildren(); showError(e, "Bindings"); }
    };
    lastSearch();
  });
}

function bindingRow(b, events, refresh) {
  const actions = el("td", { class: "actions" });
  const unbind = el("button", { type: "button", class: "danger", "data-action": "unbind", text: "Unbind…" });
  const watch = el("button", { type: "button", "data-action": "watch", text: "Follow events" });
  actions.append(unbind, watch);
  unbind.addEventListener("click", () => {
    const yes = el("button", { type: "button", class: "danger", "data-action": "confirm-unbind", text: "Yes, unbind" });
    const no = el("button", { type: "button", text: "Keep it" });
    const ask = el("div", { class: "confirm", role: "group", "aria-label": "Confirm unbinding" },
      el("span", { text: `Unbind extension ${b.extension} on ${b.pbx} from ${b.account}? The account loses control of the phone.` }), yes, no);
    actions.replaceChildren(ask);
    yes.focus();
    no.addEventListener("click", () => { actions.replaceChildren(unbind, watch); unbind.focus(); });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await api.call("DELETE", `/v1/bindings/${api.seg(b.pbx)}/${api.seg(b.extension)}` + api.query({ account: b.account }));
        say(`Unbound extension ${b.extension} on ${b.pbx} from ${b.account}.`);
        refresh();
      } catch (e) {
        showError(e, "Unbind");
        yes.disabled = false;
      }
    });
  });
  watch.addEventListener("click", () => followEvents(b, events));
  return el("tr", { "data-extension": b.extension, "data-pbx": b.pbx },
    el("td", { text: b.account }), el("td", { text: b.pbx }), el("td", { text: b.extension }),
    el("td", { text: b.did ? `${b.did}${b.did_verified ? " (verified)" : " (not verified)"}` : "" }),
    el("td", { text: when(b.bound_at) }), actions);
}

/** Follow a bound extension's events (the API's server-sent events, read with fetch). */
function followEvents(b, box) {
  leave();
  const ctl = new AbortController();
  cleanups.push(() => ctl.abort());
  const list = el("ol", { class: "events", id: "event-list" });
  const stop = el("button", { type: "button", text: "Stop following" });
  const state = el("p", { class: "hint", id: "event-state", text: "Connecting…" });
  box.replaceChildren(el("h2", { text: `Events of ${b.extension} on ${b.pbx}` }), state, stop, list);
  stop.addEventListener("click", () => { ctl.abort(); state.textContent = "Stopped."; });
  const path = `/v1/extensions/${api.seg(b.pbx)}/${api.seg(b.extension)}/events` + api.query({ account: b.account });
  api.follow(path, ctl.signal, (data) => {
    let text = data;
    try {
      const v = JSON.parse(data);
      text = v.event ? `${v.event}${v.cause ? " (" + v.cause + ")" : ""}` : v.link ? `link ${v.link}` : v.binding ? `binding ${v.binding}` : data;
    } catch (_) { /* shown as it came */ }
    state.textContent = "Following (live).";
    list.prepend(el("li", {}, el("time", { text: when(Date.now()) }), " ", text));
    while (list.children.length > MAX_EVENTS_SHOWN) list.lastElementChild.remove();
  }, () => { state.textContent = "Following (live)."; }).then(() => { state.textContent = "The stream ended."; }).catch((e) => {
    if (ctl.signal.aborted) return;
    state.textContent = "The stream failed.";
    showError(e, "Events");
  });
}

// ---- audit log ---------------------------------------------------------------------------

function auditPage() {
  const form = el("form", { class: "filters", id: "audit-filters" },
    field("a-extension", "Extension", { inputmode: "tel" }), field("a-account", "Account", {}),
    field("a-from", "From", { type: "datetime-local", step: "1" }), field("a-to", "To", { type: "datetime-local", step: "1" }),
    field("a-limit", "At most", { type: "number", min: "1", max: "10000", value: "500" }),
    el("button", { type: "submit", text: "Search" }));
  const results = el("div", { id: "audit-results" });
  page("Audit log", el("p", { class: "hint", text: "The append-only audit log, newest first. Extension and account are searched by the gateway; the time range filters the newest records it returned." }), form, results);
  const search = async () => {
    clearError();
    const from = $("a-from").value ? new Date($("a-from").value).getTime() : -Infinity;
    const to = $("a-to").value ? new Date($("a-to").value).getTime() : Infinity;
    try {
      const v = await api.call("GET", "/v1/audit" + api.query({ extension: $("a-extension").value, account: $("a-account").value, limit: $("a-limit").value }));
      const recs = (Array.isArray(v.records) ? v.records : []).filter((r) => r.at >= from && r.at <= to).sort((a, b) => b.at - a.at);
      results.replaceChildren(el("p", { class: "summary", id: "audit-summary", "data-count": recs.length, text: `${recs.length} record${recs.length === 1 ? "" : "s"}.` }),
        table("Audit records", ["Time", "Tenant", "Account", "PBX", "Extension", "Association", "Step", "Result"], recs.map((r) => el("tr", {},
          el("td", { text: when(r.at) }), el("td", { text: r.tenant }), el("td", { text: r.account }), el("td", { text: r.pbx }), el("td", { text: r.extension }),
          el("td", {}, r.association ? assocLink(r.association) : ""), el("td", { text: stepWords(r.step) }), el("td", { text: r.result === "ok" ? "ok" : reasonWords(r.result) }))), { id: "audit-table" }));
    } catch (e) {
      results.replaceChildren();
      if (e instanceof api.ApiError && e.status === 401) return expired(e);
      showError(e, "Audit log");
    }
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  search();
}

// ---- counters and owner blocks -----------------------------------------------------------

function limitsPage() {
  const form = el("form", { class: "filters", id: "limits-form" },
    field("l-pbx", "PBX", {}), field("l-extension", "Extension", { inputmode: "tel" }),
    field("l-account", "Account", {}), field("l-tenant", "Tenant (optional)", {}),
    el("button", { type: "submit", text: "Show" }));
  const results = el("div", { id: "limits-results" });
  page("Counters and owner blocks", el("p", { class: "hint", text: "Failure counters and owner blocks of an extension (give PBX and extension) or of an account (give the account, and the tenant to pick one tenant's). Reset and lift are audited." }), form, results);
  let scope = null;
  const render = (v, s) => {
    const counters = Array.isArray(v.counters) ? v.counters : [];
    const blocks = Array.isArray(v.blocks) ? v.blocks : [];
    const reset = el("button", { type: "button", class: "danger", id: "reset-counters", text: "Reset these counters…", disabled: counters.length ? null : true });
    const lift = el("button", { type: "button", class: "danger", id: "lift-blocks", text: "Lift these blocks…", disabled: blocks.length ? null : true });
    results.replaceChildren(
      el("h2", { text: "Failure counters" }),
      counters.length ? table("Failure counters", ["Kind", "Tenant", "Account", "PBX", "Extension", "Failures"], counters.map((c) => el("tr", { "data-kind": c.kind },
        el("td", { text: c.kind === "account" ? "account" : "account on extension" }), el("td", { text: c.tenant }), el("td", { text: c.account }), el("td", { text: c.pbx || "" }), el("td", { text: c.extension || "" }), el("td", { "data-value": c.value, text: c.value }))), { id: "counters-table" })
        : el("p", { id: "no-counters", text: "No failure counted." }),
      el("h2", { text: "Owner blocks" }),
      blocks.length ? table("Owner blocks", ["Tenant", "Account", "PBX", "Extension", "Until"], blocks.map((b) => el("tr", {},
        el("td", { text: b.tenant }), el("td", { text: b.account }), el("td", { text: b.pbx }), el("td", { text: b.extension }), el("td", { text: when(b.until) }))), { id: "blocks-table" })
        : el("p", { id: "no-blocks", text: "No owner block." }),
      el("div", { class: "actions", id: "limits-actions" }, reset, lift));
    const confirmThen = (btn, question, path, done) => btn.addEventListener("click", () => {
      const yes = el("button", { type: "button", class: "danger", "data-action": "confirm", text: "Yes" });
      const no = el("button", { type: "button", text: "No" });
      const box = $("limits-actions");
      const ask = el("div", { class: "confirm", role: "group", "aria-label": question }, el("span", { text: question }), yes, no);
      box.replaceChildren(ask);
      yes.focus();
      no.addEventListener("click", () => { box.replaceChildren(reset, lift); btn.focus(); });
      yes.addEventListener("click", async () => {
        yes.disabled = true;
        try {
          render(await api.call("POST", path, s), s);
          say(done);
        } catch (e) { showError(e, "Limits"); yes.disabled = false; }
      });
    });
    confirmThen(reset, "Reset these failure counters to zero?", "/v1/admin/counters/reset", "Counters reset.");
    confirmThen(lift, "Lift these owner blocks?", "/v1/admin/blocks/lift", "Owner blocks lifted.");
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearError();
    const s = {};
    for (const [k, id] of [["pbx", "l-pbx"], ["extension", "l-extension"], ["account", "l-account"], ["tenant", "l-tenant"]]) {
      const v = $(id).value.trim();
      if (v) s[k] = v;
    }
    scope = s;
    try {
      render(await api.call("GET", "/v1/admin/counters" + api.query(scope)), scope);
    } catch (e) {
      results.replaceChildren();
      if (e instanceof api.ApiError && e.status === 401) return expired(e);
      showError(e, "Counters and blocks");
    }
  });
  // A tenant's token cannot read limits (the API checks the token before anything else): say
  // so at once, in the API's words.
  if (!isAdmin()) api.call("GET", "/v1/admin/counters").catch((e) => showError(e, "Counters and blocks"));
}

// ---- directory ---------------------------------------------------------------------------

function directoryPage() {
  const form = el("form", { class: "filters", id: "directory-form" },
    field("d-pbx", "PBX", { required: true, list: isAdmin() ? "pbx-ids" : null }), field("d-name", "Name", { required: true }),
    el("button", { type: "submit", text: "Look up" }));
  const ids = el("datalist", { id: "pbx-ids" });
  const results = el("div", { id: "directory-results" });
  page("Directory lookup", el("p", { class: "hint", text: "Find an extension by its user's name in a PBX's directory (case and accents ignored; words may be beginnings)." }), form, ids, results);
  if (isAdmin()) api.call("GET", "/v1/pbx").then((v) => ids.replaceChildren(...(v.pbx || []).map((p) => el("option", { value: p.id })))).catch(() => {});
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const list = await api.call("GET", `/v1/directory/${api.seg($("d-pbx").value.trim())}` + api.query({ name: $("d-name").value }));
      const matches = Array.isArray(list) ? list : [];
      results.replaceChildren(matches.length
        ? table("Directory matches", ["Extension", "Name", "Score"], matches.map((m) => el("tr", { "data-extension": m.extension }, el("td", { text: m.extension }), el("td", { text: m.name }), el("td", { text: m.score }))), { id: "directory-table" })
        : el("p", { id: "directory-none", text: "Nobody of that name." }));
    } catch (e) {
      results.replaceChildren();
      if (e instanceof api.ApiError && e.status === 401) return expired(e);
      showError(e, "Directory");
    }
  });
}

route();
