// The audit trail under abuse: floods of refused calls cost a bounded number of rows, real
// calls stay findable, summaries come from running totals, nothing is read or judged before
// the secret is checked, and a vendor's complaint about our own credential never reaches the
// agent.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { useKeybrake, startKeybrake, stripeClient } from "./harness.mjs";

const kb = useKeybrake();
const FORM = { "content-type": "application/x-www-form-urlencoded" };

/** Sends `n` calls, `width` at a time. */
async function flood(n, width, send) {
  let next = 0;
  const statuses = new Map();
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) {
        next += 1;
        const res = await send();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      }
    }),
  );
  return statuses;
}

/**
 * Opens a raw connection and sends the head of a chunked POST with `token`. Returns the socket
 * and a promise of the answer's head (what came back by the time the connection closed).
 */
function chunkedPost(token) {
  const socket = net.connect(kb.port, "127.0.0.1");
  socket.on("error", () => {});
  const answer = new Promise((resolve) => {
    let text = "";
    socket.on("data", (d) => {
      text += d.toString("latin1");
      if (text.includes("\r\n\r\n")) resolve(text);
    });
    socket.on("close", () => resolve(text));
  });
  socket.write(
    `POST /v1/payment_intents HTTP/1.1\r\nHost: 127.0.0.1:${kb.port}\r\nAuthorization: Bearer ${token}\r\n` +
      "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
  );
  return { socket, answer };
}

const rowsOf = async (key) =>
  (await kb.db.prepare("SELECT COUNT(*) AS n FROM audit WHERE key_id = ?").bind(key.key_id).first()).n;

test("a flood of 5,000 refused calls, half on a revoked key, leaves a bounded number of rows", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] });
  const refused = () =>
    kb.call("POST", "/v1/charges", { token: key.vault_key, body: "amount=1&currency=usd", headers: FORM });
  assert.deepEqual([...(await flood(2_500, 50, refused))], [[403, 2_500]]);
  assert.equal((await kb.call("DELETE", `/vault/keys/${key.key_id}`)).status, 200);
  assert.deepEqual([...(await flood(2_500, 50, refused))], [[401, 2_500]]);
  const audit = await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 5_000, 30_000);
  assert.deepEqual(audit.outcomes, { settled: 0, released: 0, unknown: 0, denied: 5_000, replayed: 0 });
  assert.equal(await rowsOf(key), 101, "100 rows of their own, then one that counts the rest");
  const coalesced = (await kb.call("GET", `/vault/audit?key_id=${key.key_id}&order=desc&limit=1`)).json.calls[0];
  assert.equal(coalesced.count, 4_900);
  assert.equal(coalesced.decision, "endpoint_not_allowed,key_revoked");
  assert.ok(coalesced.last_ts >= coalesced.ts);
  assert.equal(kb.stripe.requests.length, 0);
});

test("a real call is still found first after 10,000 refused ones", async () => {
  const label = `flood-${Date.now()}`;
  const key = await kb.issueKey({ daily_usd_cap: 5, agent_run_label: label });
  const refused = () =>
    kb.call("POST", "/v1/payment_intents", { token: key.vault_key, body: "amount=100&currency=eur", headers: FORM });
  assert.deepEqual([...(await flood(10_000, 100, refused))], [[422, 10_000]]);
  const stripe = await stripeClient(kb, key.vault_key);
  const real = await stripe.paymentIntents.create({ amount: 150, currency: "usd" });
  await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 10_001 && p.outcomes.settled === 1, 30_000);
  const forwarded = await kb.call("GET", `/vault/audit?agent_run_label=${label}&decision=forwarded`);
  assert.deepEqual(forwarded.json.calls.map((c) => c.vendor_object_id), [real.id]);
  const newest = await kb.call("GET", `/vault/audit?key_id=${key.key_id}&order=desc&limit=1`);
  assert.equal(newest.json.calls[0].vendor_object_id, real.id);
  assert.equal(newest.json.has_more, true);
  assert.equal(newest.json.total_usd, 1.5);
  assert.ok((await rowsOf(key)) <= 102);
});

test("audit pages follow Stripe's cursors in both orders", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 100 });
  for (let i = 0; i < 7; i++) {
    const res = await kb.call("POST", "/v1/payment_intents", { token: key.vault_key, body: `amount=${100 + i}&currency=usd`, headers: FORM });
    assert.equal(res.status, 200);
  }
  await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 7);
  const page = async (params) => (await kb.call("GET", `/vault/audit?key_id=${key.key_id}&limit=3&${params}`)).json;
  const seen = [];
  let p = await page("");
  for (;;) {
    seen.push(...p.calls.map((c) => c.cost_usd));
    if (!p.has_more) break;
    p = await page(`starting_after=${p.calls.at(-1).id}`);
  }
  assert.deepEqual(seen, [1, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06]);
  const desc = await page("order=desc");
  assert.deepEqual(desc.calls.map((c) => c.cost_usd), [1.06, 1.05, 1.04]);
  const back = await page(`order=desc&ending_before=${desc.calls.at(-1).id}`);
  assert.deepEqual(back.calls.map((c) => c.cost_usd), [1.06, 1.05]);
  const unknownCursor = await kb.call("GET", `/vault/audit?key_id=${key.key_id}&starting_after=nope-1`);
  assert.equal(unknownCursor.status, 400);
});

test("a wrong secret gets the same 401 whatever else is wrong with the request", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 5 });
  const wrong = key.vault_key.slice(0, -1) + (key.vault_key.endsWith("A") ? "B" : "A");
  const cases = [
    { path: "/v1/payment_intents", headers: { "x-http-method-override": "GET" } },
    { path: "/v1/payment_intents", headers: { "x-forwarded-host": "evil.example" } },
    { path: "/v1/payment_intents", headers: { "content-encoding": "gzip" } },
    { path: "/v1/payment_intents", headers: { "idempotency-key": "k".repeat(300) } },
    { path: "/v1/payment_intents", headers: { "idempotency-key": `kb_${"f".repeat(64)}_1` } },
    { path: "/v1/payment_intents", headers: { "stripe-account": "acct_other" } },
    { path: "/v1/payment_intents?amount=100000" },
    { path: "/v1/payment_intents", body: "amount=1&amount=2&currency=usd" },
    { path: "/v1/payment_intents", body: "_method=GET&amount=1&currency=usd" },
    { path: "/v1/payment_intents%2Fx" },
    { path: "/v1//payment_intents" },
    { path: "/v1/payouts" },
    { path: "/twilio/2010-04-01/Accounts/AC1/Messages.json" },
    { path: "/v1/payment_intents", body: "x".repeat(2 * 1024 * 1024) },
  ];
  for (const c of cases) {
    const res = await kb.call("POST", c.path, {
      token: wrong,
      body: c.body ?? "amount=100&currency=usd",
      headers: { ...FORM, ...(c.headers ?? {}) },
    });
    assert.equal(res.status, 401, `${JSON.stringify(c).slice(0, 80)}: ${res.text}`);
    assert.equal(res.headers.get("x-keybrake-error"), "invalid_key");
  }
  assert.equal(kb.stripe.requests.length, 0);
  assert.equal(await rowsOf(key), 0, "a failed authentication writes nothing");
});

test("a chunked body is read only once the secret is verified", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 5 });
  const wrong = key.vault_key.slice(0, -1) + (key.vault_key.endsWith("A") ? "B" : "A");
  const { socket, answer } = chunkedPost(wrong);
  // One chunk, then nothing: the answer must not wait for the rest.
  socket.write("5\r\namoun\r\n");
  const head = await Promise.race([answer, new Promise((r) => setTimeout(() => r("no answer within 5 s"), 5_000))]);
  socket.destroy();
  assert.match(head, /^HTTP\/1\.1 401/, head.slice(0, 200));
});

test("a 50 MB chunked body is answered 413 without being read whole", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 5 });
  const total = 50 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024, "a");
  const { socket, answer } = chunkedPost(key.vault_key);
  let sent = 0;
  let answered = false;
  answer.then(() => (answered = true));
  while (sent < total && !answered && !socket.destroyed) {
    const ok = socket.write(`${chunk.length.toString(16)}\r\n`) && socket.write(chunk) && socket.write("\r\n");
    sent += chunk.length;
    if (!ok) await Promise.race([new Promise((r) => socket.once("drain", r)), answer]);
  }
  const head = await answer;
  socket.destroy();
  assert.match(head, /^HTTP\/1\.1 413/, head.slice(0, 200));
  assert.ok(sent < total / 4, `the answer came after ${sent} bytes of ${total}`);
  assert.equal(kb.stripe.requests.length, 0);
});

test("a field given twice in an admin body is refused, naming it", async () => {
  const body = '{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["POST /v1/payment_intents"],"daily_usd_cap":1000000}';
  const res = await kb.call("POST", "/vault/keys", { body });
  assert.equal(res.status, 400);
  assert.match(res.json.error.message, /daily_usd_cap/);
  assert.equal((await kb.db.prepare("SELECT COUNT(*) AS n FROM vault_keys WHERE daily_cap_micros = 1000000000000").first()).n, 0);
});

test("a vendor's 401 to Keybrake's own credential becomes vendor_auth_failed, without the vendor's text", async () => {
  const rolled = await startKeybrake({ vars: { STRIPE_SECRET_KEY: "sk_test_rolled_key_0000" } });
  try {
    const key = await rolled.issueKey({ daily_usd_cap: 5 });
    const res = await rolled.call("POST", "/v1/payment_intents", { token: key.vault_key, body: "amount=100&currency=usd", headers: FORM });
    assert.equal(res.status, 502, res.text);
    assert.equal(res.json.error.type, "vendor_auth_failed");
    assert.doesNotMatch(res.text, /Invalid API Key|sk_test|0000/);
    assert.equal(rolled.stripe.requests.length, 1, "the vendor did refuse it");
    const state = await rolled.settled(key);
    assert.deepEqual([state.spent_usd, state.reserved_usd], [0, 0], "nothing was executed, so nothing is held");
    assert.ok(rolled.logs.some((l) => /Keybrake's own credential/.test(l.line)), "the operator is told in the log");
  } finally {
    await rolled.close();
  }
});

test("summaries come from running totals, kept exact as rows are replaced", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  kb.stripe.misbehave(500); // charged, then the answer is lost: unknown, then replayed to settled
  const res = await kb.call("POST", "/v1/payment_intents", { token: key.vault_key, body: "amount=250&currency=usd", headers: FORM });
  assert.equal(res.status, 500);
  await kb.settled(key);
  const page = await kb.auditUntil({ key_id: key.key_id }, (p) => p.outcomes.settled === 1);
  assert.deepEqual([page.count, page.total_usd, page.outcomes.unknown], [1, 2.5, 0], "the unknown row was replaced, not added");
  const totals = await kb.db.prepare("SELECT calls, cost_micros FROM audit_totals WHERE scope = 'key' AND value = ?").bind(key.key_id).first();
  assert.deepEqual(totals, { calls: 1, cost_micros: 2_500_000 });
});
