// The /aiops dashboard. Plain ES module: reads the public REST API and the gateway's live
// stream (Server-Sent Events over fetch(), so the token travels in the Authorization header,
// never in a URL). The token lives in sessionStorage of this tab only.
import { drawChart } from "./chart.js";

const API = "/api/v1/aiops";
const TOKEN_KEY = "aiops.token";
const IMPLIED = { viewer: ["viewer"], operator: ["operator", "viewer"], admin: ["admin", "operator", "viewer"], agent: ["agent"] };
const $ = (id) => document.getElementById(id);
const TEST_NAMES = { DRIFT_TEST_KS: "KS", DRIFT_TEST_ANDERSON_DARLING: "AD", DRIFT_TEST_MANN_WHITNEY: "MW", DRIFT_TEST_PSI: "PSI" };

const state = {
  token: null, claims: null, roles: [], stream: null, retry: 0,
  anomalies: [], suggestions: {}, drift: [], remediations: [], collect: null, series: [],
  windowSeconds: 900, verdicts: new Map(), busy: new Set(),
};

// ---- tiny DOM helper ---------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

// Replaces a container's content, keeping keyboard focus on the "same" control.
function replace(container, ...nodes) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.key : null;
  container.replaceChildren(...nodes.flat());
  if (key) {
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again && !again.disabled) again.focus();
  }
}

const enumText = (v, prefix) => (v || "").replace(prefix, "").replaceAll("_", " ").toLowerCase();
const ms = (t) => (t ? Date.parse(t) : NaN);
const when = (t) => (t ? new Date(ms(t)).toLocaleTimeString() : "—");
const num = (v, digits = 3) => (v === undefined || v === null || Number.isNaN(Number(v)) ? "—" : Number(v).toPrecision(digits));
const labelsText = (labels) => Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");

// ---- auth --------------------------------------------------------------------------------
function decodeClaims(token) {
  // For display only: the gateway verifies every request.
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")),
      (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

const can = (role) => state.roles.some((r) => (IMPLIED[r] || []).includes(role));

function signIn(token) {
  const claims = decodeClaims(token);
  if (!claims) {
    $("signin-error").textContent = "That does not look like a JWT (header.payload.signature).";
    return;
  }
  state.token = token;
  state.claims = claims;
  state.roles = Array.isArray(claims.roles) ? claims.roles : [];
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin-error").textContent = "";
  $("token-input").value = "";
  $("signin").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  $("whoami").textContent = `${claims.sub || "?"} · ${state.roles.join(", ") || "no role"}`;
  renderAll();
  connect();
  $("main").focus();
}

function signOut(message = "") {
  state.token = null;
  state.claims = null;
  state.roles = [];
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  state.stream = null;
  $("main").hidden = true;
  $("signout").hidden = true;
  $("whoami").textContent = "";
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  setConn("idle", "not connected");
  $("token-input").focus();
}

async function devSignIn(role) {
  try {
    const resp = await fetch("/aiops/dev-token", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ role }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    signIn(body.token);
  } catch (err) {
    $("signin-error").textContent = `Dev sign-in failed: ${err.message}`;
  }
}

// ---- REST --------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (resp.status === 401) signOut("Your token was refused or has expired; sign in again.");
  if (!resp.ok) {
    const err = new Error((data && data.error && data.error.message) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function notice(text) {
  $("notice").textContent = text;
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const x = Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

async function feedback(key, body, label) {
  if (state.busy.has(key)) return;
  state.busy.add(key);
  renderAnomalies();
  try {
    await api("POST", "/feedback", body);
    state.verdicts.set(key, label);
    notice(`Feedback stored: ${label}.`);
  } catch (err) {
    notice(`Feedback failed: ${err.message}`);
  } finally {
    state.busy.delete(key);
    renderAnomalies();
  }
}

function anomalyFeedback(a, verdict, label) {
  return feedback(`a|${a.name}`, {
    target: { kind: "TARGET_KIND_ANOMALY", id: a.name }, verdict,
    series: a.series || "", detector: a.detector || "", signature: a.signature || "",
    labels: { source: "dashboard" },
  }, label);
}

function suggestionFeedback(a, reply, s, verdict, label) {
  return feedback(`s|${a.name}|${s.action}`, {
    target: { kind: "TARGET_KIND_SUGGESTION", id: `${a.name}/${s.action}`.slice(0, 128) }, verdict,
    series: a.series || "", action: s.action, signature: reply.signatureKey || "",
    labels: { source: "dashboard" },
  }, label);
}

async function remediate(a, s, execute) {
  const key = `r|${a.name}|${s.action}|${execute}`;
  if (state.busy.has(key)) return;
  state.busy.add(key);
  renderAnomalies();
  try {
    const reply = await api("POST", "/remediate", {
      action: s.action, target: s.target, parameters: s.parameters || {}, execute,
      requestId: uuid(), anomaly: a.name, reason: `dashboard: ${execute ? "run" : "dry run"} for ${a.name}`,
    });
    const r = reply.remediation || {};
    notice(`${s.action}: ${enumText(r.state, "REMEDIATION_STATE_")}${r.refusalReason ? " — " + r.refusalReason : ""}`);
  } catch (err) {
    notice(`${s.action} failed: ${err.message}`);
  } finally {
    state.busy.delete(key);
    renderAnomalies();
  }
}

// ---- live stream -------------------------------------------------------------------------
function setConn(kind, text) {
  const pill = $("conn");
  pill.dataset.state = kind;
  pill.textContent = text;
}

async function connect() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  setConn("reconnecting", state.retry ? "reconnecting…" : "connecting…");
  try {
    const resp = await fetch(`${API}/events`, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
      signal: controller.signal, cache: "no-store",
    });
    if (resp.status === 401) { signOut("Your token was refused or has expired; sign in again."); return; }
    if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        dispatch(block);
      }
    }
    throw new Error("stream ended");
  } catch (err) {
    if (controller.signal.aborted || state.stream !== controller) return;
    state.retry = Math.min(state.retry + 1, 6);
    const delay = Math.min(15000, 500 * 2 ** state.retry) * (0.75 + Math.random() * 0.5);
    setConn("reconnecting", `reconnecting in ${Math.round(delay / 1000)} s`);
    setTimeout(() => { if (state.stream === controller && state.token) connect(); }, delay);
  }
}

function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const value = JSON.parse(data.join("\n"));
  switch (event) {
    case "hello":
      state.retry = 0;
      setConn("live", "live");
      if (Array.isArray(value.roles)) state.roles = value.roles;
      break;
    case "expired":
      signOut("Your token has expired; sign in again.");
      break;
    case "anomalies":
      state.anomalies = value.anomalies || [];
      state.suggestions = value.suggestions || {};
      renderAnomalies();
      renderCharts();
      break;
    case "drift":
      state.drift = value.driftStatuses || [];
      renderDrift();
      renderCharts();
      break;
    case "remediations":
      state.remediations = value.remediations || [];
      renderRemediations();
      break;
    case "collect":
      state.collect = value;
      renderSlo();
      break;
    case "series":
      state.series = value.series || [];
      state.windowSeconds = value.windowSeconds || 900;
      renderCharts();
      break;
    case "status": {
      const problems = Object.entries(value.problems || {});
      setConn(problems.length ? "degraded" : "live",
        problems.length ? `live · ${problems.map(([t, c]) => `${t}: ${c.toLowerCase()}`).join(", ")}` : "live");
      break;
    }
    default:
      break;
  }
}

// ---- rendering ---------------------------------------------------------------------------
function renderAll() {
  renderSlo(); renderDrift(); renderAnomalies(); renderCharts(); renderRemediations();
}

function table(head, rows, cls = "") {
  return h("table", { class: cls },
    h("thead", {}, h("tr", {}, head.map(([t, c]) => h("th", { scope: "col", class: c || "" }, t)))),
    h("tbody", {}, rows));
}

function renderSlo() {
  const c = state.collect;
  if (!c) return;
  const cmp = { COMPARISON_LESS_THAN: "<", COMPARISON_LESS_THAN_OR_EQUAL: "≤", COMPARISON_GREATER_THAN: ">", COMPARISON_GREATER_THAN_OR_EQUAL: "≥" };
  const rows = (c.metrics || []).map((m) => h("tr", {},
    h("td", {}, m.displayName || m.metric),
    h("td", { class: "num" }, m.observed ? `${num(m.value || 0, 4)} ${m.unit || ""}` : "—"),
    h("td", { class: "num" }, `${cmp[m.comparison] || ""} ${num(m.sloTarget, 4)} ${m.unit || ""}`),
    h("td", {}, !m.observed ? h("span", { class: "badge" }, "no data")
      : m.withinSlo ? h("span", { class: "badge ok" }, "within SLO") : h("span", { class: "badge bad" }, "violated"))));
  replace($("slo"), rows.length ? table([["Metric"], ["Value"], ["Target"], ["Status"]], rows)
    : h("p", { class: "empty" }, "No critical metrics collected yet."));
}

function renderDrift() {
  const rows = state.drift.map((d) => {
    const tests = (d.results || []).map((r) =>
      `${TEST_NAMES[r.test] || enumText(r.test, "DRIFT_TEST_")} ${num(r.statistic, 2)}${r.pValue !== undefined ? ` (p=${num(r.pValue, 2)})` : ""}`);
    const st = d.state || "";
    const badge = st === "DRIFT_STATE_DRIFTING" ? "bad" : st === "DRIFT_STATE_STABLE" ? "ok" : "";
    const combined = d.decision && d.decision.combinedPValue !== undefined ? num(d.decision.combinedPValue, 2) : "—";
    return h("tr", {},
      h("td", { class: "series-name" }, d.series || d.name),
      h("td", {}, h("span", { class: `badge ${badge}` }, enumText(st, "DRIFT_STATE_") || "unknown")),
      h("td", { class: "num" }, combined),
      h("td", { class: "stats", title: `reference ${d.referenceCount || 0} points, current ${d.currentCount || 0}` },
        tests.join(" · ") || "—"));
  });
  replace($("drift"), rows.length
    ? table([["Series"], ["State"], ["p-value"], ["Test statistics"]], rows)
    : h("p", { class: "empty" }, "No drift evaluated yet."));
}

function sevBadge(sev) {
  const s = enumText(sev, "SEVERITY_");
  return h("span", { class: `badge ${s === "critical" ? "bad" : s === "warning" ? "warn" : ""}` }, s || "unknown");
}

function verdictButtons(a) {
  const key = `a|${a.name}`;
  const done = state.verdicts.get(key);
  if (done) return h("span", { class: "done", role: "status" }, `Marked ${done}`);
  if (!can("operator")) return null;
  const busy = state.busy.has(key);
  const label = a.series || a.name;
  return [
    h("button", { type: "button", disabled: busy, dataset: { key: `${key}|confirm`, action: "confirm" },
      "aria-label": `Confirm anomaly on ${label}`, onclick: () => anomalyFeedback(a, "VERDICT_CONFIRMED", "confirmed") }, "Confirm"),
    h("button", { type: "button", disabled: busy, dataset: { key: `${key}|fp`, action: "false-positive" },
      "aria-label": `Mark anomaly on ${label} as false positive`, onclick: () => anomalyFeedback(a, "VERDICT_FALSE_POSITIVE", "false positive") }, "False positive"),
  ];
}

function suggestionItem(a, reply, s) {
  const key = `s|${a.name}|${s.action}`;
  const done = state.verdicts.get(key);
  const target = s.target ? `${enumText(s.target.kind, "TARGET_KIND_")} ${s.target.namespace ? s.target.namespace + "/" : ""}${s.target.name || ""}` : "";
  const controls = [];
  if (done) controls.push(h("span", { class: "done", role: "status" }, `Marked ${done}`));
  else if (can("operator")) {
    const busy = state.busy.has(key);
    controls.push(
      h("button", { type: "button", disabled: busy, dataset: { key: `${key}|helpful`, action: "helpful" },
        "aria-label": `${s.action} was helpful`, onclick: () => suggestionFeedback(a, reply, s, "VERDICT_HELPFUL", "helpful") }, "Helpful"),
      h("button", { type: "button", disabled: busy, dataset: { key: `${key}|unhelpful`, action: "not-helpful" },
        "aria-label": `${s.action} was not helpful`, onclick: () => suggestionFeedback(a, reply, s, "VERDICT_NOT_HELPFUL", "not helpful") }, "Not helpful"));
  }
  if (can("operator")) {
    controls.push(h("button", { type: "button", class: "primary remediate", disabled: state.busy.has(`r|${a.name}|${s.action}|false`),
      dataset: { key: `${key}|dry`, action: "dry-run" }, "aria-label": `Dry run ${s.action}`, onclick: () => remediate(a, s, false) }, "Dry run"));
    if (can("admin") || !s.destructive) {
      controls.push(h("button", { type: "button", class: "danger remediate", disabled: state.busy.has(`r|${a.name}|${s.action}|true`),
        dataset: { key: `${key}|run`, action: "run" }, "aria-label": `Run ${s.action} for real`,
        onclick: () => { if (confirm(`Run ${s.action} on ${target} for real?`)) remediate(a, s, true); } }, "Run"));
    }
  }
  return h("li", {},
    h("strong", {}, s.action), " ", target ? h("span", { class: "meta" }, `on ${target}`) : null, " ",
    h("span", { class: "badge" }, `confidence ${num(s.confidence, 2)}`),
    s.destructive ? h("span", { class: "badge bad" }, "destructive") : null,
    h("p", { class: "rationale" }, s.rationale || ""),
    controls.length ? h("div", { class: "actions" }, controls) : null);
}

function renderAnomalies() {
  const items = state.anomalies.map((a) => {
    const reply = state.suggestions[a.name];
    let sugg = null;
    if (reply && reply.error) sugg = h("p", { class: "meta" }, `Suggestions unavailable (${reply.error.toLowerCase()}).`);
    else if (reply) {
      const list = reply.suggestions || [];
      sugg = list.length ? h("ol", { class: "suggestions", "aria-label": `Suggested actions for ${a.series}` },
        list.map((s) => suggestionItem(a, reply, s))) : h("p", { class: "meta" }, "No playbook action applies.");
    }
    return h("article", { class: "anomaly", dataset: { anomaly: a.name } },
      h("h3", {}, sevBadge(a.severity), " ", a.series || a.name, " ",
        h("span", { class: "badge" }, enumText(a.state, "ANOMALY_STATE_"))),
      h("p", { class: "meta" },
        `from ${when(a.startTime)}${a.endTime ? " to " + when(a.endTime) : " (open)"} · peak score ${num(a.peakScore)} ` +
        `(threshold ${num(a.threshold)}) at ${num(a.peakValue, 4)} · ${a.detector || ""}`),
      a.explanation ? h("p", { class: "rationale" }, a.explanation) : null,
      h("div", { class: "actions" }, verdictButtons(a)),
      sugg);
  });
  $("anomaly-count").textContent = state.anomalies.length ? `(${state.anomalies.length})` : "";
  replace($("anomalies"), items.length ? items : h("p", { class: "empty" }, "No anomalies. All quiet."));
}

function renderCharts() {
  if (!state.series.length) return;
  const end = Date.now();
  const start = end - state.windowSeconds * 1000;
  const drift = new Map(state.drift.map((d) => [d.series, d]));
  const newest = new Map();
  for (const a of state.anomalies) newest.set(a.series, Math.max(newest.get(a.series) || 0, ms(a.startTime) || 0));
  const rank = ({ series }) => newest.get(series.key) || 0;
  const ordered = [...state.series].sort((p, q) => rank(q) - rank(p));
  const cards = ordered.map(({ series, points }) => {
    const key = series.key || series.name;
    const mine = state.anomalies.filter((a) => a.series === key || a.series === series.name);
    const pts = points.map(([t, v]) => [ms(t), Number(v)]).filter((p) => !Number.isNaN(p[0]));
    // A young series fills its chart instead of hugging the right edge.
    const from = pts.length ? Math.max(start, Math.min(pts[0][0], end - 60000)) : start;
    const svg = drawChart({
      title: `${key}: ${pts.length} points, ${mine.length} anomalies`,
      points: pts, start: from, end,
      windows: mine.map((a) => ({ start: ms(a.startTime), end: a.endTime ? ms(a.endTime) : end })),
      scores: mine.filter((a) => a.peakTime).map((a) => ({ t: ms(a.peakTime), score: a.peakScore || 0, threshold: a.threshold || 0 })),
    });
    const d = drift.get(key);
    const last = pts.length ? pts[pts.length - 1][1] : null;
    return h("figure", { class: "chart", dataset: { series: key } },
      h("h3", {}, key, " ", d ? h("span", { class: `badge ${d.state === "DRIFT_STATE_DRIFTING" ? "bad" : ""}` },
        enumText(d.state, "DRIFT_STATE_")) : null),
      svg,
      h("p", { class: "last" }, last === null ? "no points in the window" : `last ${num(last, 4)} ${series.unit || ""} · ${pts.length} points`));
  });
  replace($("charts"), cards);
}

function renderRemediations() {
  const rows = state.remediations.map((r) => {
    const st = r.state || "";
    const cls = /FAILED|REFUSED|DENIED/.test(st) ? "bad" : /SUCCEEDED|DRY_RUN/.test(st) ? "ok" : "warn";
    const t = r.target || {};
    return h("tr", {},
      h("td", { class: "num" }, when(r.createTime)),
      h("td", {}, r.action || ""),
      h("td", {}, `${t.namespace ? t.namespace + "/" : ""}${t.name || ""}`),
      h("td", {}, h("span", { class: `badge ${cls}` }, enumText(st, "REMEDIATION_STATE_")), r.execute ? "" : " (dry run)"),
      h("td", { class: "hide-narrow" }, `${r.requester || ""}${r.automatic ? " (auto)" : ""}`),
      h("td", { class: "hide-narrow" }, enumText(r.outcome, "VERIFICATION_OUTCOME_") || "—"),
      h("td", { class: "hide-narrow" }, r.refusalReason || r.reason || ""));
  });
  replace($("remediations"), rows.length
    ? table([["When"], ["Action"], ["Target"], ["State"], ["By", "hide-narrow"], ["Outcome", "hide-narrow"], ["Reason", "hide-narrow"]], rows)
    : h("p", { class: "empty" }, "No remediation yet."));
}

// ---- start -------------------------------------------------------------------------------
async function start() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("token-input").value.trim());
  });
  $("signout").addEventListener("click", () => signOut());
  for (const b of document.querySelectorAll("[data-dev-role]")) {
    b.addEventListener("click", () => devSignIn(b.dataset.devRole));
  }
  setInterval(() => { if (state.token) renderCharts(); }, 10000);
  try {
    const cfg = await (await fetch("/aiops/config", { cache: "no-store" })).json();
    $("dev-signin").hidden = !cfg.devSignin;
  } catch {
    $("dev-signin").hidden = true;
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else { $("signin").hidden = false; }
}

start();
