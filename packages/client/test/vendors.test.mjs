// The official SDKs from stripeFor, twilioFor and resendFor, against the Worker and its vendor
// fakes: each reaches Keybrake from the base URL alone, and each SDK's cap hit is recognized as
// such, while a vendor's own rate limit is not.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Keybrake, isCapHit, isRetryable } from "keybrake";
import { useKeybrake, ADMIN_KEY } from "../../../tests/e2e/harness.mjs";

const kb = useKeybrake();
const admin = () => new Keybrake({ baseUrl: kb.url, token: ADMIN_KEY });
const TWILIO_MESSAGES = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json";

/** How many calls Keybrake refused for a cap hit on this key, from its audit trail. */
async function capRefusals(keyId) {
  const page = await kb.auditUntil({ key_id: keyId }, (p) => p.outcomes.denied >= 1);
  return page.calls.filter((c) => c.decision.includes("cap_exhausted")).reduce((n, c) => n + c.count, 0);
}

test("stripe: a cap hit is recognized, final, and sent once; a vendor rate limit is retryable", async () => {
  const client = admin();
  const key = await client.keys.issue({ vendor: "stripe", daily_usd_cap: 3, allowed_endpoints: ["POST /v1/payment_intents"] });
  // stripe-node's default retries stay on: Stripe-Should-Retry: false must stop them.
  const stripe = client.stripeFor(key);
  await stripe.paymentIntents.create({ amount: 200, currency: "usd" });

  kb.stripe.misbehave(429); // the vendor's own rate limit: not a cap hit
  const limited = await client.stripeFor(key, { maxNetworkRetries: 0 }).paymentIntents.create({ amount: 50, currency: "usd" }).catch((e) => e);
  assert.equal(limited.statusCode, 429);
  assert.equal(isCapHit(limited), false, "a 429 alone is not a cap hit");
  assert.equal(isRetryable(limited), true);

  const capped = await stripe.paymentIntents.create({ amount: 200, currency: "usd" }).catch((e) => e);
  assert.equal(capped.type, "StripeRateLimitError");
  assert.equal(isCapHit(capped), true);
  assert.equal(isRetryable(capped), false);
  assert.equal(isCapHit(new Error("wrapped", { cause: capped })), true, "found behind a wrapper's cause");
  assert.equal(await capRefusals(key.key_id), 1, "stripe-node did not retry the cap hit");

  await client.keys.revoke(key.key_id);
  const revoked = await stripe.paymentIntents.create({ amount: 1, currency: "usd" }).catch((e) => e);
  assert.equal(isCapHit(revoked), false);
  assert.equal(isRetryable(revoked), false, "a revoked key is a refusal");
});

test("twilio: the cap hit surfaces through RestException", async () => {
  const client = admin();
  const key = await client.keys.issue({ vendor: "twilio", daily_usd_cap: 0.03, allowed_endpoints: [TWILIO_MESSAGES] });
  const twilio = client.twilioFor(key);
  const send = () => twilio.messages.create({ to: "+14155550100", from: "+15005550006", body: "hello" });
  const first = await send();
  assert.match(first.sid, /^SM/);
  await send();
  const capped = await send().catch((e) => e);
  assert.equal(capped.constructor.name, "RestException");
  assert.equal(capped.status, 429);
  assert.equal(isCapHit(capped), true);
  assert.equal(isRetryable(capped), false);
  assert.equal(await capRefusals(key.key_id), 1);

  const other = await client.keys.issue({ vendor: "twilio", daily_usd_cap: 1, allowed_endpoints: [TWILIO_MESSAGES] });
  const offList = await client.twilioFor(other).calls.create({ to: "+14155550100", from: "+15005550006", url: "https://x.example/a" }).catch((e) => e);
  assert.equal(offList.status, 403);
  assert.equal(isCapHit(offList), false);
  assert.equal(isRetryable(offList), false);
});

test("resend: the cap hit is the answer's error, recognized alone or with the answer", async () => {
  const client = admin();
  const key = await client.keys.issue({ vendor: "resend", daily_usd_cap: 0.001, allowed_endpoints: ["POST /emails"] });
  const resend = client.resendFor(key);
  const email = { from: "agent@example.com", to: "user@example.com", subject: "hi", html: "<p>hi</p>" };
  const sent = await resend.emails.send(email);
  assert.equal(sent.error, null);
  assert.ok(sent.data.id);
  const capped = await resend.emails.send(email);
  assert.equal(capped.error.name, "cap_exhausted");
  assert.equal(isCapHit(capped.error), true);
  assert.equal(isCapHit(capped), true);
  assert.equal(isCapHit(sent), false);
  assert.equal(isRetryable(capped.error), false);
});

test("fetch: a plain answer is judged by its headers", async () => {
  const key = await admin().keys.issue({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] });
  const charge = () =>
    fetch(`${kb.url}/v1/payment_intents`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.vault_key}`, "content-type": "application/x-www-form-urlencoded" },
      body: "amount=100&currency=usd",
    });
  const ok = await charge();
  assert.equal(isCapHit(ok), false);
  const capped = await charge();
  assert.equal(capped.status, 429);
  assert.equal(isCapHit(capped), true);
  assert.equal(isRetryable(capped), false);
  kb.stripe.misbehave(429);
  const other = await admin().keys.issue({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] });
  const limited = await fetch(`${kb.url}/v1/payment_intents`, {
    method: "POST",
    headers: { authorization: `Bearer ${other.vault_key}`, "content-type": "application/x-www-form-urlencoded" },
    body: "amount=100&currency=usd",
  });
  assert.equal(limited.status, 429);
  assert.equal(isCapHit(limited), false);
  assert.equal(isRetryable(limited), true);
});

test("a connection failure is retryable; an unknown error is not", async () => {
  const port = await new Promise((resolve) => {
    const s = http.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const key = await admin().keys.issue({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] });
  const gone = new Keybrake({ baseUrl: `http://127.0.0.1:${port}` });
  const err = await gone.stripeFor(key, { maxNetworkRetries: 0 }).paymentIntents.create({ amount: 1, currency: "usd" }).catch((e) => e);
  assert.equal(err.type, "StripeConnectionError");
  assert.equal(isRetryable(err), true);
  assert.equal(isRetryable(new TypeError("x is not a function")), false);
  assert.equal(isCapHit(null), false);
});

test("each SDK is pointed at the base URL whatever its scheme, port and path", async () => {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url} ${req.headers.authorization?.startsWith("Bearer kb_") || req.headers.authorization?.startsWith("Basic ")}`);
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ id: "x", sid: "SMx" }));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const base = `http://127.0.0.1:${server.address().port}/edge/keybrake/`;
    const client = new Keybrake({ baseUrl: base });
    const hex = "c".repeat(64);
    const secret = "d".repeat(43);
    await client.twilioFor(`kb_twilio_${hex}_${secret}`).messages.create({ to: "+1", from: "+2", body: "b" });
    await client.resendFor(`kb_resend_${hex}_${secret}`).emails.send({ from: "a@b.c", to: "d@e.f", subject: "s", html: "h" });
    assert.deepEqual(seen, [
      "POST /edge/keybrake/twilio/2010-04-01/Accounts/ACkeybrake/Messages.json true",
      "POST /edge/keybrake/resend/emails true",
    ]);
    assert.throws(() => client.stripeFor(`kb_stripe_${hex}_${secret}`), /stripe-node cannot send requests under a path prefix/);
  } finally {
    server.close();
  }
  const stripe = new Keybrake({ baseUrl: "https://keybrake.example.com" }).stripeFor(`kb_stripe_${"c".repeat(64)}_${"d".repeat(43)}`);
  assert.deepEqual(
    ["host", "port", "protocol"].map((f) => stripe.getApiField(f)),
    ["keybrake.example.com", 443, "https"],
  );
  const local = new Keybrake({ baseUrl: "http://localhost:8788" }).stripeFor(`kb_stripe_${"c".repeat(64)}_${"d".repeat(43)}`);
  assert.deepEqual(["host", "port", "protocol"].map((f) => local.getApiField(f)), ["localhost", 8788, "http"]);
});
