// hybridgate admin console: every page's behaviour. Talks to /admin/api/... with the session
// cookie and the CSRF token from the page's <meta name="csrf-token">.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};

// Never throws: a request that could not be made (network down, gateway gone) comes back as status 0
// with an error message, like any API error, so every caller shows it instead of dying silently.
async function api(method, url, body) {
  const opts = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["content-type"] = "application/json"; opts.body = JSON.stringify(body); }
  let r;
  try { r = await fetch(url, opts); } catch (e) {
    return { ok: false, status: 0, data: { error: { message: `The gateway could not be reached (${e.message}).` } } };
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { ok: r.ok, status: r.status, data };
}

function flash(msg) { $("#flash").textContent = msg || ""; }
function errText(res) { return (res.data && res.data.error && res.data.error.message) || `HTTP ${res.status}`; }
function warningsText(data) {
  const w = (data && data.warnings) || [];
  return w.length ? ` Warning: ${w.join("; ")}.` : "";
}
// A last resort: whatever a page's code did not expect still reaches the operator, not only the JS console.
window.addEventListener("unhandledrejection", (ev) => flash(`Console error: ${ev.reason && ev.reason.message || ev.reason}`));
window.addEventListener("error", (ev) => flash(`Console error: ${ev.message}`));

function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number" && !Number.isInteger(v)) return v.toPrecision(4);
  return String(v);
}

function table(columns, rows, opts = {}) {
  const t = el("table", opts.id ? { id: opts.id } : {});
  t.append(el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { text: c })))));
  const tb = el("tbody");
  rows.forEach((r, i) => {
    // a clickable row is a control: reachable with Tab and opened with Enter or Space, like a button
    const tr = el("tr", opts.onrow ? { class: "clickable", tabindex: "0" } : {}, ...r.map((c) => el("td", { text: c })));
    if (opts.onrow) {
      tr.addEventListener("click", () => opts.onrow(i));
      tr.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); opts.onrow(i); }
      });
    }
    tb.append(tr);
  });
  t.append(tb);
  return t;
}

// ---- charts ------------------------------------------------------------------------------

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];

// A long name (a user, a policy) as a tick or legend label would take the whole canvas and leave no room
// to draw the chart: labels are cut to SHORT characters (tooltips and the table keep the full text).
const SHORT = 32;
const short = (text) => (typeof text === "string" && text.length > SHORT ? `${text.slice(0, SHORT - 1)}…` : text);
const shortLegend = { labels: { generateLabels: (chart) =>
  Chart.defaults.plugins.legend.labels.generateLabels(chart).map((item) => ({ ...item, text: short(item.text) })) } };

function drawChart(canvas, spec) {
  const color = (i) => PALETTE[i % PALETTE.length];
  let cfg;
  if (spec.type === "scatter" || spec.type === "step") {
    const step = spec.type === "step";
    cfg = {
      type: step ? "line" : "scatter",
      data: { datasets: spec.datasets.map((d, i) => ({
        label: d.label, data: d.points.map((p) => step ? { x: Date.parse(p.x), y: p.y } : p),
        showLine: step || !!d.line, stepped: step ? "before" : false, borderColor: color(i),
        backgroundColor: color(i), pointRadius: d.line ? 0 : 5 })) },
      options: { animation: false, maintainAspectRatio: false, parsing: step ? true : undefined,
        scales: { x: { type: "linear", title: { display: true, text: spec.x },
                       ticks: step ? { callback: (v) => new Date(v).toISOString().slice(5, 16) } : {} },
                  y: { title: { display: true, text: spec.y } } },
        plugins: { legend: shortLegend,
                   tooltip: { callbacks: { label: (c) => `${c.raw.label || c.dataset.label}: (${fmt(c.raw.x)}, ${fmt(c.raw.y)})` } } } },
    };
  } else {
    const axes = new Set(spec.datasets.map((d) => d.axis || "y"));
    cfg = {
      type: spec.type,
      data: { labels: spec.labels, datasets: spec.datasets.map((d, i) => ({
        label: d.label, data: d.data, yAxisID: d.axis || "y", stack: d.stack, borderColor: color(i),
        backgroundColor: color(i) })) },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: shortLegend },
        scales: Object.assign({ x: { stacked: !!spec.stacked,
                                     ticks: { callback(value) { return short(this.getLabelForValue(value)); } } },
                                y: { stacked: !!spec.stacked, beginAtZero: true } },
          axes.has("y2") ? { y2: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } } } : {}) },
    };
  }
  return new Chart(canvas, cfg);
}

// ---- dashboards --------------------------------------------------------------------------

const charts = {};
let loadGeneration = 0;

async function loadDashboards() {
  const generation = ++loadGeneration;  // a newer load (filters applied again) supersedes this one
  const params = new URLSearchParams([...new FormData($("#filters")).entries()].filter(([, v]) => v));
  const index = await api("GET", "/admin/api/console/dashboards");
  if (generation !== loadGeneration) return;
  if (!index.ok) { flash(errText(index)); return; }
  flash("");
  const root = $("#dashboards");
  let away = null;  // the database (or the gateway) is away: the message every later dashboard would get
  let refused = false;  // the filters were refused (400): every dashboard would be, for the same reason
  for (const name of index.data.data) {
    let sec = document.getElementById(`dash-${name}`);
    if (!sec) {
      sec = el("section", { class: "dash", id: `dash-${name}`, "data-dashboard": name });
      root.append(sec);
    }
    // Once one dashboard found the database or the gateway away, or the filters refused, the others are
    // not asked: each would wait out the same timeout in turn (minutes in all on a database that hangs),
    // or get the same 400.
    const res = away !== null || refused ? null
      : await api("GET", `/admin/api/console/dashboards/${name}?${params}`);
    if (generation !== loadGeneration) return;
    sec.replaceChildren();
    if (res === null) { if (away !== null) sec.append(el("p", { text: `${name}: ${away}` })); continue; }
    if (!res.ok) {
      // the filters' fault (an inverted range, a time that is none): said once, at the top
      if (res.status === 400) { refused = true; flash(errText(res)); $("#dash-range").textContent = ""; continue; }
      sec.append(el("p", { text: `${name}: ${errText(res)}` }));
      if (res.status === 503 || res.status === 0) { away = errText(res); flash(away); }
      continue;
    }
    const d = res.data;
    // the range every figure covers, exactly (not widened to whole hours): the request log's for the same range
    $("#dash-range").textContent = `Figures for ${d.since.slice(0, 19).replace("T", " ")} to `
      + `${d.until.slice(0, 19).replace("T", " ")} UTC.`;
    const canvas = el("canvas");
    const csv = el("a", { href: `/admin/api/console/dashboards/${name}?${params}&format=csv`, class: "csv",
                          download: `${name}.csv`, text: "CSV" });
    sec.append(el("h3", { text: d.title + " " }, csv), el("div", { class: "chart" }, canvas));
    if (d.notes) sec.append(el("p", { class: "note", text: d.notes }));
    sec.append(el("div", { class: "scroll" }, table(d.columns, d.cells, { id: `table-${name}` })));
    if (!d.rows.length) sec.append(el("p", { class: "empty", text: "No data for this range and these filters." }));
    if (charts[name]) charts[name].destroy();
    charts[name] = drawChart(canvas, d.chart);
    sec.setAttribute("data-rows", String(d.rows.length));
  }
  if (generation === loadGeneration) document.body.setAttribute("data-loaded", "1");
}

// ---- policies ----------------------------------------------------------------------------

let current = null;  // {name, versions, active_version}
const NEW_POLICY = (name) => `name: ${name}
description: A new policy.

selector:
  type: cheapest

fallbacks:
  triggers: [5xx, timeout, 429, connection]
`;

function renderGutter(bad = {}) {
  const n = $("#policy-yaml").value.split("\n").length;
  const g = $("#gutter");
  g.replaceChildren(...Array.from({ length: n }, (_, i) => {
    const line = i + 1;
    const d = el("div", { "data-line": String(line), text: String(line) });
    if (bad[line]) { d.className = "bad"; d.title = bad[line]; }
    return d;
  }));
}

function showErrors(errors) {
  const ul = $("#policy-errors");
  const bad = {};
  ul.replaceChildren(...errors.map((e) => {
    if (e.line) bad[e.line] = e.message;
    return el("li", { class: "error-line", "data-line": String(e.line || ""),
                      text: `${e.line ? `line ${e.line}: ` : ""}${e.path || "<root>"}: ${e.message}` });
  }));
  renderGutter(bad);
}

async function loadPolicyList() {
  const res = await api("GET", "/admin/api/policies");
  if (!res.ok) { flash(errText(res)); return; }
  $("#policy-list").replaceChildren(...res.data.data.map((p) => el("li", {},
    el("a", { href: "#", "data-policy": p.name, text: `${p.name} (${p.retired ? "retired" : `v${p.active_version ?? "-"}`})`,
              onclick: (ev) => { ev.preventDefault(); openPolicy(p.name); } }))));
}

async function openPolicy(name, fresh) {
  showErrors([]);
  $("#simulate-out").replaceChildren();
  $("#estimate-out").replaceChildren();
  $("#policy-title").textContent = name;
  if (fresh) {
    current = { name, versions: [], active_version: null, retired: null };
    $("#policy-yaml").value = NEW_POLICY(name);
  } else {
    const res = await api("GET", `/admin/api/policies/${encodeURIComponent(name)}`);
    if (!res.ok) { flash(errText(res)); return; }
    current = { name, versions: res.data.versions, active_version: res.data.active_version, retired: res.data.retired };
    const r = current.retired;
    if (r) $("#policy-title").textContent = `${name} (retired ${r.retired_at} by ${r.retired_by || "unknown"}; was v${r.version ?? "-"})`;
    const active = current.versions.find((v) => v.active) || current.versions[current.versions.length - 1];
    $("#policy-yaml").value = active.spec_yaml;
  }
  $("#policy-versions").replaceChildren(table(["version", "active", "created_at", "comment"],
    current.versions.map((v) => [String(v.version), v.active ? "yes" : "", v.created_at || "", v.comment || ""]),
    { id: "versions-table" }));
  $("#policy-versions").setAttribute("data-active", String(current.active_version ?? ""));
  $("#policy-versions").setAttribute("data-retired", current.retired ? "1" : "");
  renderGutter();
}

// The editor's buttons act on the open policy: none open yet is the operator's to fix, not a crash.
function policyOpen() {
  if (current) return true;
  flash("Open a policy from the list, or create a new one, first.");
  return false;
}

async function validatePolicy() {
  if (!policyOpen()) return false;
  const res = await api("POST", `/admin/api/policies/${encodeURIComponent(current.name)}/validate`,
                        { spec_yaml: $("#policy-yaml").value });
  if (res.ok) { showErrors([]); flash("Valid." + warningsText(res.data)); return true; }
  if (res.status !== 422) { flash(errText(res)); return false; }  // the check failed, not the policy
  const err = res.data && res.data.error;
  showErrors((err && err.details) || [{ message: errText(res) }]);
  flash("Invalid policy.");
  return false;
}

function estimateTable(est) {
  if (!est || !est.rows) return el("p", { id: "estimate-empty", text: (est && est.note) || "No logged traffic." });
  const rows = [];
  for (const what of ["quality", "cost"]) {
    for (const e of est[what]) rows.push([what, e.method, fmt(e.value), fmt(e.lo), fmt(e.hi)]);
  }
  rows.push(["live policy", "measured", fmt(est.live.mean_feedback), "", ""]);
  rows.push(["live policy cost", "measured", fmt(est.live.mean_cost_usd), "", ""]);
  return el("div", {},
    el("h4", { text: `Off-policy estimate of the draft on ${est.rows} logged requests ` +
                     `(effective sample size ${fmt(est.effective_sample_size)})` }),
    table(["metric", "estimator", "value", "ci95_lo", "ci95_hi"], rows, { id: "estimate-table" }));
}

async function evaluatePolicy() {
  if (!policyOpen()) return;
  const res = await api("POST", `/admin/api/console/policies/${encodeURIComponent(current.name)}/evaluate`,
    { spec_yaml: $("#policy-yaml").value,
      request: { messages: [{ role: "user", content: $("#sim-message").value }] } });
  if (res.status === 422 && res.data && res.data.errors) { showErrors(res.data.errors); flash("Invalid policy."); return; }
  if (!res.ok) { flash(errText(res)); return; }
  showErrors([]);
  flash(warningsText(res.data).trim());
  const sim = res.data.simulate || {};
  $("#simulate-out").replaceChildren(el("h4", { text: "Decision" }),
    el("pre", { id: "simulate-result", text: JSON.stringify(sim, null, 2) }));
  $("#estimate-out").replaceChildren(estimateTable(res.data.estimate));
}

async function activatePolicy() {
  if (!policyOpen() || !(await validatePolicy())) return;
  const res = await api("PUT", `/admin/api/policies/${encodeURIComponent(current.name)}`,
                        { spec_yaml: $("#policy-yaml").value, comment: "console" });
  if (!res.ok) { flash(errText(res)); return; }
  const activated = `Activated ${current.name}@${res.data.version}.${warningsText(res.data)}`;
  await loadPolicyList();
  await openPolicy(current.name);
  flash(activated);
}

async function rollbackPolicy() {
  if (!policyOpen()) return;
  const res = await api("POST", `/admin/api/policies/${encodeURIComponent(current.name)}/activate`, {});
  if (!res.ok) { flash(errText(res)); return; }
  const rolled = `Rolled back ${current.name} to version ${res.data.version}.`;
  await loadPolicyList();
  await openPolicy(current.name);
  flash(rolled);
}

// Retiring stops the policy routing in every gateway process (its name becomes an unknown model); its
// versions stay as history, and saving it again makes it live as a new version.
async function retirePolicy() {
  if (!policyOpen()) return;
  const name = current.name;
  if (!window.confirm(`Retire policy ${name}? Requests naming it will get "model not found" in every ` +
                      "gateway process. Its versions are kept; saving it again makes it live.")) return;
  const res = await api("DELETE", `/admin/api/policies/${encodeURIComponent(name)}`);
  if (!res.ok) { flash(errText(res)); return; }
  const retired = `Retired ${name} (was version ${res.data.version}).`;
  await loadPolicyList();
  await openPolicy(name);
  flash(retired);
}

function initPolicies() {
  loadPolicyList();
  $("#policy-yaml").addEventListener("input", () => renderGutter());
  $("#new-policy").addEventListener("submit", (ev) => {
    ev.preventDefault();
    openPolicy(new FormData(ev.target).get("name"), true);
  });
  $("#btn-validate").addEventListener("click", validatePolicy);
  $("#btn-evaluate").addEventListener("click", evaluatePolicy);
  $("#btn-activate").addEventListener("click", activatePolicy);
  $("#btn-rollback").addEventListener("click", rollbackPolicy);
  $("#btn-retire").addEventListener("click", retirePolicy);
  $("#diff-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!policyOpen()) return;
    const f = new URLSearchParams([["a", new FormData(ev.target).get("a")], ["b", new FormData(ev.target).get("b")]]);
    const res = await api("GET", `/admin/api/console/policies/${encodeURIComponent(current.name)}/diff?${f}`);
    $("#diff-out").textContent = res.ok ? res.data.diff : errText(res);
  });
}

// ---- deployments -------------------------------------------------------------------------

let pollError = null;  // the message the last failed refresh showed: the next good one takes it away

async function loadDeployments() {
  const res = await api("GET", "/admin/api/console/deployments");
  if (!res.ok) { pollError = errText(res); flash(pollError); return; }
  if (pollError !== null && $("#flash").textContent === pollError) flash("");
  pollError = res.data.warning || null;  // breakers listed, the last hour's figures not (database away)
  if (pollError !== null) flash(pollError);
  const t = el("table", { id: "deployments" });
  t.append(el("thead", {}, el("tr", {}, ...["deployment", "model", "provider", "breaker", "attempts (1h)",
    "error rate (1h)", "p50 ms", "p95 ms", ""].map((c) => el("th", { text: c })))));
  const tb = el("tbody");
  for (const d of res.data.data) {
    const force = (mode) => el("button", { type: "button", "data-force": mode ?? "auto", text: mode ?? "auto",
      onclick: async () => {
        const res = await api("POST", `/admin/api/breakers/${encodeURIComponent(d.deployment)}`, { mode });
        if (!res.ok) { flash(errText(res)); return; }
        loadDeployments();
      } });
    tb.append(el("tr", { "data-deployment": d.deployment },
      el("td", { text: d.deployment }), el("td", { text: d.model }), el("td", { text: d.provider }),
      // a forced breaker says so: it stays in that state, whatever the traffic, until set back to auto
      el("td", {}, el("span", { class: `state state-${d.state}`, text: d.state }),
        ...(d.forced ? [" ", el("span", { class: "forced", text: "forced",
                                         title: `forced ${d.forced} by an operator: "auto" hands it back` })] : [])),
      el("td", { text: fmt(d.attempts_1h) }), el("td", { text: fmt(d.error_rate_1h) }),
      el("td", { text: fmt(d.latency_p50_ms_1h) }), el("td", { text: fmt(d.latency_p95_ms_1h) }),
      el("td", {}, force("open"), force("closed"), force(null))));
  }
  t.append(tb);
  $("#deployments-table").replaceChildren(t);
}

// One refresh at a time: on a database that hangs each one waits out the gateway's timeout (10 s by
// default), and a page left open would otherwise pile up requests holding the connections traffic needs.
let deploymentsPolling = false;
async function pollDeployments() {
  if (deploymentsPolling) return;
  deploymentsPolling = true;
  try { await loadDeployments(); } finally { deploymentsPolling = false; }
}

// ---- keys and budgets --------------------------------------------------------------------

const KEY_PAGE = 100;  // rows drawn at a time: a few thousand at once took the browser seconds
let keysBefore = null;  // the last key shown: the next page's cursor
let keysGeneration = 0;

function keyRow(k) {
  const revoked = !!k.revoked_at;
  // the server's status, or "expired" when the expiry passed while the page was open
  const expired = !revoked && k.expires_at && Date.parse(k.expires_at) <= Date.now();
  const tr = el("tr", { "data-key": k.id },
    ...[k.id, k.name, k.key_prefix + "…", (k.allowed_models || ["all"]).join(","),
        k.budget_usd != null ? `${fmt(k.budget_usd)} / ${k.spend_period}` : "",
        `${fmt(k.spent_usd)} (${k.spend_period})`, fmt(k.rpm_limit), fmt(k.tpm_limit), k.user || "", k.team || "",
        k.expires_at ? `${k.expires_at.slice(0, 19).replace("T", " ")} UTC` : "never",
        expired ? "expired" : k.status].map((c) => el("td", { text: c })),
    el("td", {}, revoked ? "" : el("button", { type: "button", text: "Revoke", onclick: async () => {
      // irreversible, and every client holding the key starts failing: asked first, like Retire
      if (!window.confirm(`Revoke key ${k.name} (${k.key_prefix}…)? Requests with it are refused from now on; ` +
                          "this cannot be undone.")) return;
      const res = await api("DELETE", `/admin/api/keys/${encodeURIComponent(k.id)}`);
      if (!res.ok) { flash(errText(res)); return; }
      // redrawn in place: reloading would drop the pages shown below the first
      tr.replaceWith(keyRow({ ...k, revoked_at: new Date().toISOString(), status: "revoked" })); } })));
  return tr;
}

// Newest first, a page at a time; "More keys" appends the next page.
async function loadKeys(more) {
  const generation = ++keysGeneration;  // only the latest listing's answer is shown
  const params = new URLSearchParams({ limit: String(KEY_PAGE) });
  if (more && keysBefore) params.set("before", keysBefore);
  const res = await api("GET", `/admin/api/console/keys?${params}`);
  if (generation !== keysGeneration) return;
  if (!res.ok) { flash(errText(res)); return; }
  keysBefore = res.data.next_before;
  $("#keys-more").hidden = !keysBefore;
  const rows = res.data.data.map(keyRow);
  if (more) { $("#keys tbody").append(...rows); return; }
  const t = el("table", { id: "keys" });
  t.append(el("thead", {}, el("tr", {}, ...["id", "name", "prefix", "models", "budget", "spent", "rpm", "tpm",
    "user", "team", "expires", "status", ""].map((c) => el("th", { text: c })))));
  t.append(el("tbody", {}, ...rows));
  $("#keys-table").replaceChildren(t);
}

function initKeys() {
  loadKeys(false);
  $("#keys-more").addEventListener("click", () => loadKeys(true));
  $("#key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // the last key's secret goes: left on screen, it would read as the secret of the key asked for now
    $("#new-key").hidden = true;
    $("#new-key-secret").textContent = "";
    const body = {};
    for (const [k, v] of new FormData(ev.target).entries()) {
      if (!v) continue;
      if (k === "allowed_models") body[k] = v.split(",").map((s) => s.trim()).filter(Boolean);
      else if (["budget_usd"].includes(k)) body[k] = parseFloat(v);
      else if (["rpm_limit", "tpm_limit"].includes(k)) body[k] = parseInt(v, 10);
      else if (k === "expires_at") {  // the browser's local date and time, sent as the UTC instant it names
        const when = new Date(v);
        if (isNaN(when)) { flash(`Invalid expiry: ${v}`); return; }
        body[k] = when.toISOString();
      }
      else body[k] = v;
    }
    const res = await api("POST", "/admin/api/keys", body);
    if (!res.ok) { flash(errText(res)); return; }
    flash("");
    $("#new-key-secret").textContent = res.data.key;
    $("#new-key").hidden = false;
    ev.target.reset();
    loadKeys(false);
  });
}

async function loadBudgets() {
  const res = await api("GET", "/admin/api/budgets");
  if (!res.ok) { flash(errText(res)); return; }
  const t = el("table", { id: "budgets" });
  t.append(el("thead", {}, el("tr", {}, ...["scope", "limit", "period", "spent", "reserved", "remaining", "source", ""]
    .map((c) => el("th", { text: c })))));
  const tb = el("tbody");
  for (const b of res.data.data) {
    tb.append(el("tr", { "data-scope": b.scope },
      ...[b.scope, fmt(b.limit_usd), b.period, fmt(b.spent_usd), fmt(b.reserved_usd), fmt(b.remaining_usd), b.source]
        .map((c) => el("td", { text: c })),
      el("td", {}, b.source === "admin" ? el("button", { type: "button", text: "Remove", onclick: async () => {
        // the scope's spending is no longer capped (or falls back to the config file's budget): asked first,
        // like Revoke and Retire
        if (!window.confirm(`Remove the budget of ${b.scope}? Its spending is no longer capped by it, in every ` +
                            "gateway process.")) return;
        const res = await api("DELETE", `/admin/api/budgets/${encodeURIComponent(b.scope)}`);
        if (!res.ok) { flash(errText(res)); return; }
        loadBudgets(); } }) : "")));
  }
  t.append(tb);
  $("#budgets-table").replaceChildren(t);
}

function initBudgets() {
  loadBudgets();
  $("#budget-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const res = await api("PUT", `/admin/api/budgets/${encodeURIComponent(f.get("scope"))}`,
                          { limit_usd: parseFloat(f.get("limit_usd")), period: f.get("period") });
    if (!res.ok) { flash(errText(res)); return; }
    flash("");
    loadBudgets();
  });
}

// ---- request log -------------------------------------------------------------------------

let logBefore = null;  // the last row shown: (created_at, id), the next page's keyset cursor
let logBeforeId = null;
let logFilters = "";  // the filters of the rows shown: "Older" goes on with them, not with fields edited since
let logGeneration = 0;

async function loadLog(more) {
  const generation = ++logGeneration;  // only the latest query's answer is shown
  const filters = more ? logFilters
    : new URLSearchParams([...new FormData($("#log-filters")).entries()].filter(([, v]) => v)).toString();
  const params = new URLSearchParams(filters);
  if (more && logBefore) { params.set("before", logBefore); params.set("before_id", logBeforeId); }
  const res = await api("GET", `/admin/api/console/requests?${params}`);
  if (generation !== logGeneration) return;
  if (!res.ok) { flash(errText(res)); return; }
  flash("");  // an earlier query's error no longer holds
  logFilters = filters;
  const cols = res.data.columns;
  const rows = res.data.data;
  logBefore = res.data.next_before;
  logBeforeId = res.data.next_before_id;
  $("#log-more").hidden = !logBefore;
  const t = table(cols, rows.map((r) => cols.map((c) => fmt(r[c]))),
                  { id: "log", onrow: (i) => openRequest(rows[i].id) });
  if (more) { $("#log tbody").append(...t.querySelectorAll("tbody tr")); return; }
  $("#log-table").replaceChildren(t);
  if (!rows.length) $("#log-table").append(el("p", { class: "empty", text: "No requests match these filters in this range." }));
  $("#request-detail").hidden = true;  // a new query: the request opened from the old one goes away
}

async function openRequest(id) {
  const res = await api("GET", `/admin/api/console/requests/${encodeURIComponent(id)}`);
  const sec = $("#request-detail");
  sec.hidden = false;
  if (!res.ok) { sec.replaceChildren(el("p", { text: errText(res) })); sec.scrollIntoView({ block: "start" }); return; }
  const r = res.data.request;
  sec.replaceChildren(el("h3", { text: `Request ${r.id}` }),
    table(["field", "value"], ["endpoint", "streamed", "route_reason", "policy", "policy_version", "chosen_model",
      "chosen_deployment", "propensity", "served_model", "deployment",
      "status", "http_status", "error_type", "error_message", "latency_ms", "ttft_ms", "cost_usd", "prompt_tokens",
      "completion_tokens"]
      .map((k) => [k, fmt(r[k])]), { id: "detail" }),
    el("h4", { text: "Attempts" }),
    table(["#", "deployment", "status", "http", "latency_ms", "error"],
      res.data.attempts.map((a) => [String(a.attempt_no), a.deployment, a.status, fmt(a.http_status), fmt(a.latency_ms),
                                    a.error_message || ""]), { id: "detail-attempts" }),
    el("h4", { text: "Feedback" }),
    table(["source", "score", "comment"], res.data.feedback.map((f) => [f.source, fmt(f.score), f.comment || ""]),
          { id: "detail-feedback" }),
    el("h4", { text: `Bodies (log mode: ${res.data.bodies})` }),
    el("pre", { text: r.request_body || r.prompt_text || "(not logged)" }),
    el("pre", { text: r.response_body || "(not logged)" }));
  sec.scrollIntoView({ block: "start" });  // below the page of rows: bring it to the operator
}

// ---- start -------------------------------------------------------------------------------

const PAGES = {
  dashboards: () => { $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadDashboards(); }); loadDashboards(); },
  policies: initPolicies,
  deployments: () => { pollDeployments(); setInterval(pollDeployments, 3000); },
  keys: initKeys,
  budgets: initBudgets,
  requests: () => { $("#log-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadLog(false); });
                    $("#log-more").addEventListener("click", () => loadLog(true)); loadLog(false); },
};
PAGES[document.body.dataset.page]();
