// The console in a real browser: headless Chromium (Debian's `chromium`, or CHROMIUM_BIN)
// driven by playwright-core, against the built Worker in workerd (the e2e harness). Screenshots
// go to tests/console/screenshots/ (git-ignored).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startKeybrake, stripeClient, ADMIN_KEY, VENDOR_SECRETS } from "../e2e/harness.mjs";

const SHOTS = join(new URL(".", import.meta.url).pathname, "screenshots");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
let kb, browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: install Debian's chromium or set CHROMIUM_BIN`);
  mkdirSync(SHOTS, { recursive: true });
  kb = await startKeybrake();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"], headless: true });
});
after(async () => {
  await browser?.close();
  await kb?.close();
});

/** A fresh page that records what it asked for and every CSP or script error. */
async function openConsole(width = 1440) {
  const context = await browser.newContext({ viewport: { width, height: 900 } });
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource: the server responded with a status of 401/.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  page.on("dialog", (d) => d.accept());
  await page.goto(`${kb.url}/console`);
  return { context, page, requests, problems };
}

async function signIn(page, token) {
  await page.getByLabel("Admin key").fill(token);
  await page.getByLabel("Admin key").press("Enter");
}

test("the console is served with a strict CSP, from this origin only", async () => {
  const res = await fetch(`${kb.url}/console/`);
  assert.equal(res.status, 200);
  const csp = res.headers.get("content-security-policy");
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.match(csp, /connect-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  const html = await res.text();
  assert.doesNotMatch(html, /<script>|style=|https?:\/\//, "no inline script or style, no outside URL");
  assert.equal((await fetch(`${kb.url}/console/`, { method: "POST" })).status, 405);
});

test("a wrong token reveals nothing", async () => {
  const key = await kb.issueKey({ agent_run_label: "console/secret-run" });
  const { context, page, problems } = await openConsole();
  await signIn(page, "kb_admin_wrong_token_0000000000000000");
  await page.getByText("That token was not accepted.").waitFor();
  assert.equal(await page.locator("#view").isHidden(), true);
  const text = await page.locator("body").innerText();
  assert.ok(!text.includes(key.key_id.slice(0, 8)) && !text.includes("console/secret-run"), text);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused token is not kept");
  await page.screenshot({ path: join(SHOTS, "wrong-token.png") });
  assert.deepEqual(problems, []);
  await context.close();
});

test("sign in, watch a charge move the spend bar, open the run, revoke from the UI", async () => {
  const label = `console/run-${Date.now()}`;
  const key = await kb.issueKey({ agent_run_label: label, daily_usd_cap: 5 });
  const { context, page, requests, problems } = await openConsole();

  // Keyboard only: the token field has focus on arrival, Tab reaches the button, Enter submits.
  assert.equal(await page.evaluate(() => document.activeElement.id), "token");
  await page.keyboard.type(ADMIN_KEY);
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Sign in");
  await page.keyboard.press("Enter");
  const row = page.locator(`#keys-table tr[data-key-id="${key.key_id}"]`);
  await row.getByText("$0.00 of $5.00").waitFor();

  const stripe = await stripeClient(kb, key.vault_key);
  const intent = await stripe.paymentIntents.create({ amount: 200, currency: "usd" });
  await page.getByRole("button", { name: "Refresh" }).click();
  await row.getByText("$2.00 of $5.00").waitFor();
  assert.equal(await row.locator("meter").evaluate((m) => m.value), 2);
  await page.screenshot({ path: join(SHOTS, "keys-1440.png"), fullPage: true });

  // The run: its audit rows (they reach D1 off the request path), the vendor link, the chart.
  await kb.auditUntil({ agent_run_label: label }, (p) => p.count === 1);
  await row.getByRole("link", { name: label }).click();
  await page.getByRole("heading", { name: `Run ${label}` }).waitFor();
  const link = page.getByRole("link", { name: intent.id });
  assert.equal(await link.getAttribute("href"), `https://dashboard.stripe.com/payments/${intent.id}`);
  assert.equal(await page.locator("#run-total").innerText(), "$2.00");
  assert.equal(await page.locator("svg.chart rect.bar").count(), 14);
  await page.screenshot({ path: join(SHOTS, "run-1440.png"), fullPage: true });

  // With auto-refresh on, the next charge shows up without a click.
  await page.getByLabel("Refresh every 5 s").check();
  await stripe.paymentIntents.create({ amount: 100, currency: "usd" });
  await page.locator("#run-total").getByText("$3.00").waitFor({ timeout: 12_000 });
  await page.getByLabel("Refresh every 5 s").uncheck();
  assert.equal(await page.getByLabel("Refresh every 5 s").isChecked(), false);

  // Revoke from the UI: the row turns revoked without a reload, and the answer is shown.
  await page.evaluate(() => (window.__sameDocument = true));
  await page.locator(`#scope-keys tr[data-key-id="${key.key_id}"]`).getByRole("button", { name: /Revoke key/ }).click();
  await page.getByText(/is revoked \(at /).waitFor();
  assert.equal(await page.locator(`#scope-keys tr[data-key-id="${key.key_id}"] .status-revoked`).innerText(), "revoked");
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "no reload");
  const before = kb.stripe.charges.length;
  await assert.rejects(stripe.paymentIntents.create({ amount: 100, currency: "usd" }), (e) => e.statusCode === 401);
  assert.equal(kb.stripe.charges.length, before, "the refused call never reached Stripe");

  // Nothing left this origin; the token is in no cookie and no URL.
  assert.ok(requests.every((u) => u.startsWith(kb.url)), requests.join("\n"));
  assert.ok(requests.every((u) => !u.includes(ADMIN_KEY)));
  assert.deepEqual(await context.cookies(), []);
  assert.deepEqual(problems, []);
  await context.close();
});

test("revoke a whole run from its page", async () => {
  const label = `console/many-${Date.now()}`;
  const keys = [await kb.issueKey({ agent_run_label: label }), await kb.issueKey({ agent_run_label: label })];
  const child = await kb.call("POST", `/vault/keys/${keys[0].key_id}/children`, {
    token: keys[0].vault_key,
    body: { daily_usd_cap: 1, agent_run_label: `${label}/child` },
  });
  assert.equal(child.status, 201, child.text);
  const { context, page, problems } = await openConsole();
  const deletes = [];
  page.on("request", (r) => r.method() === "DELETE" && deletes.push(new URL(r.url())));
  await signIn(page, ADMIN_KEY);
  await page.locator("#keys-table").waitFor();
  await page.goto(`${kb.url}/console/#/run/${encodeURIComponent(label)}`);
  await page.getByRole("button", { name: "Revoke every key of this run" }).click();
  // One call revokes the run, and with it the child minted under another label.
  await page.getByText(`Run ${label}: 3 keys revoked, descendants included.`).waitFor();
  assert.deepEqual(deletes.map((u) => `${u.pathname}${u.search}`), [`/vault/keys?agent_run_label=${encodeURIComponent(label).replace(/%20/g, "+")}`]);
  for (const k of [...keys, child.json]) assert.equal((await kb.key(k)).status, "revoked");
  await page.locator("#scope-keys .status-revoked").nth(1).waitFor();
  assert.deepEqual(problems, []);
  await context.close();
});

test("works at 360 px: no sideways scrolling, every cell labelled", async () => {
  await kb.issueKey({ agent_run_label: "console/phone" });
  const { context, page, problems } = await openConsole(360);
  await signIn(page, ADMIN_KEY);
  await page.locator("#keys-table tr[data-key-id]").first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px`);
  await page.screenshot({ path: join(SHOTS, "keys-360.png"), fullPage: true });
  // Every control has an accessible name.
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll("button, input, select, a")].filter((el) => {
      const name = el.getAttribute("aria-label") || el.textContent.trim() || (el.id && document.querySelector(`label[for="${el.id}"]`));
      return !name && el.offsetParent !== null;
    }).length,
  );
  assert.equal(unnamed, 0);
  assert.deepEqual(problems, []);
  await context.close();
});

test("no secret reaches the page", async () => {
  const { context, page } = await openConsole();
  await signIn(page, ADMIN_KEY);
  await page.locator("#keys-table tr[data-key-id]").first().waitFor();
  const html = await page.content();
  for (const secret of VENDOR_SECRETS) assert.ok(!html.includes(secret));
  assert.ok(!html.includes(ADMIN_KEY), "the admin key is never written into the page");
  assert.doesNotMatch(html, /kb_(stripe|twilio|resend)_[0-9a-f]{64}_/);
  await context.close();
});

test("the alerts page lists webhooks and the delivery log, never a secret", async () => {
  const hook = await kb.call("POST", "/vault/webhooks", { body: { url: "http://127.0.0.1:9/unreachable", events: ["key.revoked"] } });
  assert.equal(hook.status, 201);
  const key = await kb.issueKey({ agent_run_label: "console/alerts" });
  await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  const { context, page, problems } = await openConsole();
  await signIn(page, ADMIN_KEY);
  await page.locator("#keys-table").waitFor();
  // The first attempt fails (nothing listens on port 9) and is logged.
  for (let i = 0; i < 100; i++) {
    const log = await kb.call("GET", `/vault/webhooks/deliveries?key_id=${key.key_id}`);
    if (log.json.data.length > 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await page.getByRole("link", { name: "Alerts", exact: true }).click();
  await page.getByText("http://127.0.0.1:9/unreachable").waitFor();
  await page.getByText(`evt_${key.key_id}_revoked`).first().waitFor();
  assert.match(await page.locator("main").innerText(), /failed \(no answer/);
  assert.ok(!(await page.content()).includes(hook.json.secret));
  await page.screenshot({ path: join(SHOTS, "alerts-1440.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await kb.call("DELETE", `/vault/webhooks/${hook.json.id}`);
  await context.close();
});

test("signed in with an issuer token, the console lists only that issuer's keys", async () => {
  const issuerBody = (name) => ({ name, daily_usd_budget: 20, vendors: ["stripe"], allowed_endpoints: ["POST /v1/payment_intents"] });
  const [mine, other] = await Promise.all(
    ["console-mine", "console-other"].map(async (name) => (await kb.call("POST", "/vault/issuers", { body: issuerBody(name) })).json),
  );
  const issue = async (issuer, label) => {
    const res = await kb.call("POST", "/vault/keys", {
      token: issuer.issuer_token,
      body: { vendor: "stripe", daily_usd_cap: 5, allowed_endpoints: ["POST /v1/payment_intents"], agent_run_label: label },
    });
    assert.equal(res.status, 201, res.text);
    return res.json;
  };
  const own = await issue(mine, "console/issuer-mine");
  const child = await kb.call("POST", `/vault/keys/${own.key_id}/children`, { token: own.vault_key, body: { daily_usd_cap: 1 } });
  assert.equal(child.status, 201, child.text);
  const theirs = await issue(other, "console/issuer-other");
  const rootKey = await kb.issueKey({ agent_run_label: "console/issuer-root" });

  const { context, page, problems } = await openConsole();
  await signIn(page, mine.issuer_token);
  await page.locator(`#keys-table tr[data-key-id="${child.json.key_id}"]`).waitFor();
  await page.getByText(`Issuer ${mine.issuer_id.slice(0, 8)}…: its keys only`).waitFor();
  const listed = await page.locator("#keys-table tr[data-key-id]").evaluateAll((rows) => rows.map((r) => r.dataset.keyId));
  assert.deepEqual(listed.sort(), [own.key_id, child.json.key_id].sort());
  const text = await page.locator("main").innerText();
  for (const hidden of [theirs.key_id, rootKey.key_id]) assert.ok(!text.includes(hidden.slice(0, 8)), text);
  assert.ok(!text.includes("console/issuer-other") && !text.includes("console/issuer-root"), text);
  // The child shows its issuer and its parent.
  const childRow = await page.locator(`#keys-table tr[data-key-id="${child.json.key_id}"]`).innerText();
  assert.match(childRow, new RegExp(`issuer ${mine.issuer_id.slice(0, 8)}`));
  assert.match(childRow, new RegExp(`parent ${own.key_id.slice(0, 8)}…${own.key_id.slice(64)}`));
  assert.ok(!(await page.content()).includes(mine.issuer_token), "the token is never written into the page");
  await page.screenshot({ path: join(SHOTS, "issuer-keys-1440.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});
