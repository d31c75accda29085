// The Keybrake console. Plain DOM, no dependencies, nothing from another origin. The admin
// token (the root key, or an issuer's `kbi_…` token, which sees only that issuer's keys,
// webhooks and deliveries) lives in this tab's sessionStorage only: never a cookie, never a URL. Every value
// from the API is written with textContent, never parsed as HTML: run labels come from agents.

const TOKEN_KEY = "keybrake.admin_token";
const PAGE = 50;
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------- the API

class ApiError extends Error {}

const STATUS_WORDS = {
  401: "The token was not accepted.",
  403: "That is not allowed.",
  404: "Not found. It may have been removed.",
  429: "Too many attempts. Wait a few minutes and try again.",
  500: "Keybrake had an internal problem. Try again.",
  503: "Keybrake is not configured for this yet.",
};

async function api(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      cache: "no-store",
      credentials: "omit",
      headers: {
        authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ""}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("Keybrake could not be reached. Check the connection and try again.");
  }
  let json = null;
  try {
    json = await res.json();
  } catch {
    // not JSON: the words below say what happened
  }
  if (res.ok && json !== null) return json;
  // Keybrake's own errors carry a sentence; anything else gets one by its status.
  const message = typeof json?.error?.message === "string" ? json.error.message : STATUS_WORDS[res.status];
  const error = new ApiError(message ?? `The request failed (HTTP ${res.status}).`);
  error.status = res.status;
  throw error;
}

// ------------------------------------------------------------------------------ DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

function say(text) {
  $("status").textContent = text;
}
function fail(error) {
  $("error").textContent = error instanceof ApiError ? error.message : "Something went wrong in the console.";
  if (error instanceof ApiError && error.status === 401) signOut("The token was not accepted. Sign in again.");
}
function clearMessages() {
  $("status").textContent = "";
  $("error").textContent = "";
}

function usd(n) {
  if (typeof n !== "number") return "—";
  return n.toLocaleString("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 6 });
}

function ttl(expiresAt, status) {
  if (status !== "active") return "—";
  const ms = Date.parse(expiresAt) - Date.now();
  if (!(ms > 0)) return "expired";
  const min = Math.floor(ms / 60000);
  if (min < 1) return "under a minute";
  if (min < 60) return `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${min % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

// A member key (`<object id>-<n>`) keeps its number: its parent's short id would be the same.
const short = (id) => (id ? `${id.slice(0, 8)}…${id.slice(64)}` : "—");
const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "—");

/** A link to the vendor's dashboard for an object id, or the id as text. */
function vendorLink(vendor, id) {
  if (!id) return "—";
  const frag = document.createDocumentFragment();
  id.split(",").forEach((one, i) => {
    if (i) frag.append(", ");
    let url = null;
    if (vendor === "stripe") {
      const paths = { pi_: "payments", ch_: "payments", cus_: "customers", in_: "invoices", sub_: "subscriptions", re_: "refunds" };
      const prefix = Object.keys(paths).find((p) => one.startsWith(p));
      if (prefix) url = `https://dashboard.stripe.com/${paths[prefix]}/${encodeURIComponent(one)}`;
    } else if (vendor === "twilio") {
      if (/^(SM|MM)[0-9a-f]{32}$/.test(one)) url = `https://www.twilio.com/console/sms/logs/${one}`;
      if (/^CA[0-9a-f]{32}$/.test(one)) url = `https://www.twilio.com/console/voice/calls/logs/${one}`;
    } else if (vendor === "resend" && /^[0-9a-f-]{36}$/.test(one)) {
      url = `https://resend.com/emails/${one}`;
    }
    frag.append(url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "mono", text: one }) : h("span", { class: "mono", text: one }));
  });
  return frag;
}

function table(columns, rows, caption) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "cards" },
      h("caption", { class: "skip", text: caption }),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null, text: c.label })))),
      h("tbody", {}, rows),
    ),
  );
}
function cell(label, content, num = false) {
  const td = h("td", { "data-label": label, class: num ? "num" : null });
  td.append(content ?? "—");
  return td;
}

// --------------------------------------------------------------------------------- sign-in

function signOut(message) {
  clearInterval(autoTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  $("view").hidden = true;
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("sign-in").hidden = false;
  clearMessages();
  if (message) $("error").textContent = message;
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  clearMessages();
  const value = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    await api("GET", "/vault/keys?limit=1");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("error").textContent =
      e.status === 401 ? "That token was not accepted." : e instanceof ApiError ? e.message : "Sign-in failed.";
    $("token").focus();
    return;
  }
  show();
}

/** Who the token is: an issuer's (`kbi_<issuer id>_…`) sees only its own keys; else root. */
function who() {
  const issuer = /^kbi_([0-9a-f]{64})_/.exec(sessionStorage.getItem(TOKEN_KEY) ?? "");
  return issuer ? `Issuer ${short(issuer[1])}: its keys only` : "Admin key: every key";
}

function show() {
  $("who").textContent = who();
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  route();
}

/** A "refresh every 5 s" switch for a view; the timer ends when the view is left. */
let autoTimer = null;
function autoRefresh(load) {
  const id = `auto-${Date.now()}`;
  const box = h("input", { type: "checkbox", id });
  box.addEventListener("change", () => {
    clearInterval(autoTimer);
    autoTimer = box.checked ? setInterval(() => load().catch(fail), 5000) : null;
  });
  return h("span", { class: "auto" }, box, h("label", { for: id, text: " Refresh every 5 s" }));
}

// ---------------------------------------------------------------------------------- revoke

async function revokeKey(keyId) {
  return api("DELETE", `/vault/keys/${encodeURIComponent(keyId)}`);
}

/**
 * Revokes every key of a run the token may see, and their descendants, in one call; the
 * answer comes once none of them can reach a vendor. Says how many keys it revoked.
 */
async function revokeRun(label) {
  const answer = await api("DELETE", `/vault/keys?${new URLSearchParams({ agent_run_label: label })}`);
  return answer.revoked;
}

async function allKeys(label) {
  const keys = [];
  let after = null;
  for (;;) {
    const q = new URLSearchParams({ agent_run_label: label, limit: "100" });
    if (after) q.set("starting_after", after);
    const page = await api("GET", `/vault/keys?${q}`);
    keys.push(...page.data);
    if (!page.has_more || page.data.length === 0) return keys;
    after = page.data[page.data.length - 1].key_id;
  }
}

function revokeButton(key, onDone) {
  const label = key.agent_run_label ? ` of run ${key.agent_run_label}` : "";
  const button = h("button", {
    type: "button",
    class: "danger",
    "aria-label": `Revoke key ${short(key.key_id)}${label}`,
    disabled: key.status !== "active",
    text: "Revoke",
  });
  button.addEventListener("click", async () => {
    if (!confirm(`Revoke key ${short(key.key_id)}${label}? Calls with it are refused from now on.`)) return;
    clearMessages();
    button.disabled = true;
    try {
      const answer = await revokeKey(key.key_id);
      say(`Key ${short(key.key_id)} is ${answer.status} (at ${when(answer.revoked_at)}).`);
      onDone(answer);
    } catch (e) {
      button.disabled = false;
      fail(e);
    }
  });
  return button;
}

function runRevokeButton(label, onDone) {
  const button = h("button", { type: "button", class: "danger", text: "Revoke every key of this run" });
  button.addEventListener("click", async () => {
    if (!confirm(`Revoke every key of run ${label}? Calls with them are refused from now on.`)) return;
    clearMessages();
    button.disabled = true;
    try {
      const revoked = await revokeRun(label);
      await onDone();
      say(`Run ${label}: ${revoked} key${revoked === 1 ? "" : "s"} revoked, descendants included.`);
    } catch (e) {
      fail(e);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// -------------------------------------------------------------------------------- keys view

const KEY_COLUMNS = [
  { label: "Run label" },
  { label: "Key" },
  { label: "Vendor" },
  { label: "Status" },
  { label: "Spent today" },
  { label: "Held", num: true },
  { label: "TTL left" },
  { label: "Total", num: true },
  { label: "Issuer / parent" },
  { label: "Action" },
];

/** One key's row; live figures (today's spend, held money) arrive from its object later. */
function keyRow(key) {
  const status = h("span", { class: `status-${key.status}`, text: key.status });
  const meter = h("meter", { min: 0, max: key.daily_usd_cap || 1, value: 0, "aria-label": `Spent today of ${usd(key.daily_usd_cap)}` });
  const spentText = h("span", { text: key.status === "active" ? "…" : "—" });
  const held = h("span", { text: key.status === "active" ? "…" : "—" });
  const total = h("span", { text: usd(key.total_usd) });
  const lineage = h("span");
  if (key.issuer_id) lineage.append(h("span", { class: "mono", text: `issuer ${short(key.issuer_id)}` }));
  if (key.issuer_id && key.parent_key_id) lineage.append(", ");
  if (key.parent_key_id) {
    lineage.append("parent ", h("a", { href: `#/key/${key.parent_key_id}`, class: "mono", text: short(key.parent_key_id), "aria-label": `Parent key ${key.parent_key_id}` }));
  }
  if (!lineage.childNodes.length) lineage.textContent = "—";
  const row = h(
    "tr",
    { "data-key-id": key.key_id },
    cell("Run label", key.agent_run_label ? h("a", { href: `#/run/${encodeURIComponent(key.agent_run_label)}`, text: key.agent_run_label }) : "—"),
    cell("Key", h("a", { href: `#/key/${key.key_id}`, class: "mono", text: short(key.key_id), "aria-label": `Key ${key.key_id}` })),
    cell("Vendor", key.vendor),
    cell("Status", status),
    cell("Spent today", h("span", {}, meter, " ", spentText)),
    cell("Held", held, true),
    cell("TTL left", ttl(key.expires_at, key.status)),
    cell("Total", total, true),
    cell("Issuer / parent", lineage),
    cell("Action", revokeButton(key, () => markRevoked(row))),
  );
  row.live = (state) => {
    meter.max = state.daily_usd_cap || 1;
    meter.value = Math.min(state.spent_usd, meter.max);
    spentText.textContent = `${usd(state.spent_usd)} of ${usd(state.daily_usd_cap)}`;
    spentText.dataset.spent = String(state.spent_usd);
    held.textContent = usd(state.reserved_usd);
    if (state.status !== "active") markRevokedOrExpired(row, state.status);
  };
  row.statusEl = status;
  return row;
}

function markRevoked(row) {
  markRevokedOrExpired(row, "revoked");
}
function markRevokedOrExpired(row, status) {
  row.statusEl.textContent = status;
  row.statusEl.className = `status-${status}`;
  for (const b of row.querySelectorAll("button.danger")) b.disabled = true;
}

/** Asks each active key's object for its live figures, six at a time. */
async function fillLive(rows) {
  const queue = rows.filter((r) => r.statusEl.textContent === "active");
  const worker = async () => {
    for (let row = queue.shift(); row; row = queue.shift()) {
      try {
        row.live(await api("GET", `/vault/keys/${row.dataset.keyId}`));
      } catch (e) {
        fail(e);
      }
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
}

async function keysView(view) {
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const labelInput = h("input", { id: "filter-label", name: "agent_run_label", value: params.get("agent_run_label") ?? "" });
  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    ["", "active", "revoked", "expired"].map((v) => h("option", { value: v, selected: params.get("status") === v, text: v || "any" })),
  );
  const form = h(
    "form",
    { class: "inline", "aria-label": "Filter keys" },
    h("div", {}, h("label", { for: "filter-label", text: "Run label" }), labelInput),
    h("div", {}, h("label", { for: "filter-status", text: "Status" }), statusSelect),
    h("button", { type: "submit", text: "Filter" }),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (labelInput.value.trim()) q.set("agent_run_label", labelInput.value.trim());
    if (statusSelect.value) q.set("status", statusSelect.value);
    location.hash = `#/keys${q.size ? `?${q}` : ""}`;
  });
  const tbody = h("tbody");
  const more = h("button", { type: "button", class: "secondary", hidden: true, text: "Load more" });
  const refresh = h("button", { type: "button", class: "secondary", text: "Refresh" });
  view.append(
    h("h2", { text: "Keys" }),
    form,
    h("div", { class: "actions" }, refresh, autoRefresh(() => load(true))),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "cards", id: "keys-table" },
        h("caption", { class: "skip", text: "Vault keys, newest first" }),
        h("thead", {}, h("tr", {}, KEY_COLUMNS.map((c) => h("th", { scope: "col", class: c.num ? "num" : null, text: c.label })))),
        tbody,
      ),
    ),
    more,
  );
  let after = null;
  const load = async (reset) => {
    clearMessages();
    if (reset) {
      after = null;
      tbody.replaceChildren();
    }
    const q = new URLSearchParams({ limit: String(PAGE) });
    for (const k of ["agent_run_label", "status"]) if (params.get(k)) q.set(k, params.get(k));
    if (after) q.set("starting_after", after);
    try {
      const page = await api("GET", `/vault/keys?${q}`);
      const rows = page.data.map(keyRow);
      tbody.append(...rows);
      if (tbody.children.length === 0) tbody.append(h("tr", {}, h("td", { colspan: KEY_COLUMNS.length, text: "No keys match." })));
      after = page.data.length ? page.data[page.data.length - 1].key_id : after;
      more.hidden = !page.has_more;
      await fillLive(rows);
      say(`${tbody.querySelectorAll("tr[data-key-id]").length} keys shown, updated ${new Date().toLocaleTimeString()}.`);
    } catch (e) {
      fail(e);
    }
  };
  more.addEventListener("click", () => load(false));
  refresh.addEventListener("click", () => load(true));
  await load(true);
}

// ----------------------------------------------------------------------- run and key views

function chart(days) {
  const W = 720, H = 180, left = 56, bottom = 24, top = 12;
  const max = Math.max(...days.map((d) => d.cost_usd), 0);
  const scale = max > 0 ? max : 1;
  const bw = (W - left) / days.length;
  const total = days.reduce((a, d) => a + d.cost_usd, 0);
  const peak = days.find((d) => d.cost_usd === max);
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": `Spend per UTC day over ${days.length} days: ${usd(total)} in all${max > 0 ? `, most on ${peak.day} (${usd(max)})` : ""}.`,
  });
  svg.append(
    s("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }),
    s("text", { x: left - 6, y: top + 4, "text-anchor": "end" }, usd(max)),
    s("text", { x: left - 6, y: H - bottom, "text-anchor": "end" }, "$0"),
  );
  days.forEach((d, i) => {
    const bh = ((H - bottom - top) * d.cost_usd) / scale;
    const rect = s("rect", { class: "bar", x: left + i * bw + 2, y: H - bottom - bh, width: Math.max(bw - 4, 1), height: bh });
    rect.append(s("title", {}, `${d.day}: ${usd(d.cost_usd)}`));
    svg.append(rect);
    if (i % Math.ceil(days.length / 7) === 0 || i === days.length - 1) {
      svg.append(s("text", { x: left + i * bw + bw / 2, y: H - 6, "text-anchor": "middle" }, d.day.slice(5)));
    }
  });
  return svg;
}

const AUDIT_COLUMNS = ["Time", "Key", "Call", "Status", "Decision", "Outcome", "Cost", "Vendor object"];

function auditRows(calls) {
  return calls.map((c) =>
    h(
      "tr",
      {},
      cell("Time", when(c.ts)),
      cell("Key", h("a", { href: `#/key/${c.key_id}`, class: "mono", text: short(c.key_id) })),
      cell("Call", h("span", { class: "mono", text: `${c.method} ${c.path}` })),
      cell("Status", String(c.status ?? "—")),
      cell("Decision", c.count > 1 ? `${c.decision} (×${c.count})` : c.decision),
      cell("Outcome", c.outcome),
      cell("Cost", usd(c.cost_usd), true),
      cell("Vendor object", vendorLink(c.vendor, c.vendor_object_id)),
    ),
  );
}

/** A run (`label`) or one key (`keyId`): its keys, spend against cap, chart and audit rows. */
async function scopeView(view, { label, keyId }) {
  const scopeQuery = label ? { agent_run_label: label } : { key_id: keyId };
  const heading = label ? `Run ${label}` : `Key ${keyId}`;
  view.append(h("h2", { text: heading }), h("p", {}, h("a", { href: "#/keys", text: "← All keys" })));
  const body = h("div");
  // Built once, outside what a refresh replaces, so the auto-refresh switch keeps its state.
  const actions = h("div", { class: "actions" });
  view.append(actions, body);
  const load = async () => {
    clearMessages();
    const keys = label ? await allKeys(label) : [await api("GET", `/vault/keys/${encodeURIComponent(keyId)}`)];
    const [audit, spend] = await Promise.all([
      api("GET", `/vault/audit?${new URLSearchParams({ ...scopeQuery, order: "desc", limit: "200" })}`),
      api("GET", `/vault/spend?${new URLSearchParams({ ...scopeQuery, days: "14" })}`),
    ]);
    const rows = keys.map(keyRow);
    const capToday = keys.filter((k) => k.status === "active").reduce((a, k) => a + k.daily_usd_cap, 0);
    const today = spend.days.length ? spend.days[spend.days.length - 1].cost_usd : 0;
    const summary = h(
      "dl",
      { class: "summary" },
      h("div", {}, h("dt", { text: "Spent (all time)" }), h("dd", { id: "run-total", text: usd(audit.total_usd) })),
      h("div", {}, h("dt", { text: "Spent today" }), h("dd", { text: usd(today) })),
      h("div", {}, h("dt", { text: label ? "Daily cap (active keys)" : "Daily cap" }), h("dd", { text: usd(label ? capToday : keys[0].daily_usd_cap) })),
      h("div", {}, h("dt", { text: "Calls" }), h("dd", { text: String(audit.count) })),
      h("div", {}, h("meter", { min: 0, max: (label ? capToday : keys[0].daily_usd_cap) || 1, value: today, "aria-label": "Spent today against the daily cap" })),
    );
    body.replaceChildren(
      summary,
      h("h3", { text: "Spend per day (UTC)" }),
      chart(spend.days),
      h("h3", { text: label ? "Keys of this run" : "Key" }),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "cards", id: "scope-keys" },
          h("thead", {}, h("tr", {}, KEY_COLUMNS.map((c) => h("th", { scope: "col", class: c.num ? "num" : null, text: c.label })))),
          h("tbody", {}, rows),
        ),
      ),
      h("h3", { text: "Calls, newest first" }),
      audit.calls.length ? table(AUDIT_COLUMNS.map((l) => ({ label: l, num: l === "Cost" })), auditRows(audit.calls), "Audit rows") : h("p", { text: "No calls yet." }),
      audit.has_more ? h("p", { text: "Showing the newest 200 calls." }) : "",
    );
    // A single key's view: the object is the authority on status and today's spend.
    if (!label) rows[0].live(keys[0]);
    else await fillLive(rows);
    say(`Updated ${new Date().toLocaleTimeString()}.`);
  };
  actions.append(
    h("button", { type: "button", class: "secondary", text: "Refresh", onclick: () => load().catch(fail) }),
    autoRefresh(load),
  );
  if (label) actions.append(runRevokeButton(label, () => load()));
  await load();
}

// ------------------------------------------------------------------------------ alerts view

async function alertsView(view) {
  view.append(h("h2", { text: "Alerts" }));
  const body = h("div");
  view.append(body);
  const load = async () => {
    const [hooks, log] = await Promise.all([api("GET", "/vault/webhooks"), api("GET", "/vault/webhooks/deliveries?limit=100")]);
    body.replaceChildren(
      h("h3", { text: "Webhooks" }),
      hooks.data.length
        ? table(
            [{ label: "Id" }, { label: "URL" }, { label: "Events" }, { label: "Created" }],
            hooks.data.map((w) =>
              h("tr", {}, cell("Id", h("span", { class: "mono", text: w.id })), cell("URL", h("span", { class: "mono", text: w.url })), cell("Events", w.events.join(", ")), cell("Created", when(w.created_at))),
            ),
            "Webhooks",
          )
        : h("p", { text: "No webhook yet: create one with POST /vault/webhooks." }),
      h("h3", { text: "Deliveries, newest first" }),
      log.data.length
        ? table(
            ["Time", "Event", "Type", "Key", "Attempt", "Result"].map((label) => ({ label })),
            log.data.map((d) =>
              h(
                "tr",
                {},
                cell("Time", when(d.ts)),
                cell("Event", h("span", { class: "mono", text: d.event_id })),
                cell("Type", d.type),
                cell("Key", d.key_id ? h("a", { href: `#/key/${d.key_id}`, class: "mono", text: short(d.key_id) }) : d.issuer_id ? `issuer ${short(d.issuer_id)}` : "—"),
                cell("Attempt", String(d.attempt)),
                cell("Result", d.ok ? `delivered (HTTP ${d.status})` : d.status ? `failed (HTTP ${d.status})` : `failed (${d.error ?? "no answer"})`),
              ),
            ),
            "Webhook deliveries",
          )
        : h("p", { text: "No delivery yet." }),
    );
  };
  await load();
}

// --------------------------------------------------------------------------------- routing

async function route() {
  clearInterval(autoTimer);
  if (!sessionStorage.getItem(TOKEN_KEY)) return signOut();
  clearMessages();
  const view = $("view");
  view.replaceChildren();
  const hash = location.hash || "#/keys";
  const [path] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts[0] === "run" && parts[1]) await scopeView(view, { label: decodeURIComponent(parts.slice(1).join("/")) });
    else if (parts[0] === "key" && /^[0-9a-f]{64}$/.test(parts[1] ?? "")) await scopeView(view, { keyId: parts[1] });
    else if (parts[0] === "alerts") await alertsView(view);
    else await keysView(view);
  } catch (e) {
    fail(e);
  }
  $("main").focus({ preventScroll: true });
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => {
  if (sessionStorage.getItem(TOKEN_KEY)) route();
});
if (sessionStorage.getItem(TOKEN_KEY)) show();
else signOut();
