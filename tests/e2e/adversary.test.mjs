// The cap and the revoke against a client that lies, retries with another body, disconnects
// or shares the operator's address, and against a vendor that is slow, still running, or
// drops the connection. Each test here reproduces a way the guard was once broken.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import {
  useKeybrake,
  startKeybrake,
  twilioClient,
  until,
  ADMIN_KEY,
  TWILIO_ACCOUNT_SID,
  TWILIO_API_KEY_SID,
  TWILIO_API_KEY_SECRET,
} from "./harness.mjs";

const kb = useKeybrake();

const FORM = { "content-type": "application/x-www-form-urlencoded" };
const pay = (key, body, { idempotencyKey, signal, path = "/v1/payment_intents" } = {}) =>
  kb.call("POST", path, {
    token: key.vault_key,
    body,
    headers: { ...FORM, ...(idempotencyKey ? { "idempotency-key": idempotencyKey } : {}) },
    signal,
  });
const chargedUsd = () => kb.stripe.charges.reduce((sum, c) => sum + c.amount, 0) / 100;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("a retry of an unknown call with another amount or currency is refused and never forwarded", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 5 });
  // Stripe is still running the first call when the proxy gives up (its timeout is 2 s here).
  kb.stripe.misbehave({ delay: 3_000 });
  const first = await pay(key, "amount=200&currency=usd", { idempotencyKey: "K" });
  assert.equal(first.status, 502, first.text);
  for (const body of ["amount=200&currency=eur", "amount=4000&currency=usd", "amount=200&currency=usd&customer=cus_1"]) {
    const retry = await pay(key, body, { idempotencyKey: "K" });
    assert.equal(retry.status, 422, `${body}: ${retry.text}`);
    assert.equal(retry.json.error.type, "idempotency_mismatch");
    assert.equal(retry.headers.get("stripe-should-retry"), "false");
  }
  assert.equal(kb.stripe.requests.filter((r) => !r.body.startsWith("amount=200&currency=usd")).length, 0, "never forwarded");
  const state = await kb.settled(key);
  assert.equal(state.spent_usd, 2);
  assert.equal(chargedUsd(), 2, "the first call alone was created");
});

test("a 409 answered to a retry while the vendor still runs the first call keeps the hold", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  kb.stripe.misbehave({ delay: 3_500 });
  const first = await pay(key, "amount=200&currency=usd", { idempotencyKey: "slow-1" });
  assert.equal(first.status, 502);
  const retry = await pay(key, "amount=200&currency=usd", { idempotencyKey: "slow-1" });
  assert.equal(retry.status, 409, retry.text);
  // The retry reached Stripe, which answered that the first call is still running.
  assert.ok(kb.stripe.requests.length >= 2);
  const held = await kb.key(key);
  assert.equal(held.spent_usd + held.reserved_usd, 2, `released on a 409: ${JSON.stringify(held)}`);
  // The first call completes at Stripe; the key's alarm learns it and settles the hold.
  const state = await kb.settled(key);
  assert.equal(chargedUsd(), 2);
  assert.equal(state.spent_usd, 2, JSON.stringify(state));
});

test("after a revoke has answered, the alarm sends nothing more, and unknown holds stay held", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  // The call never reaches Stripe's logic, nor does the alarm's first replay. Any later replay
  // would create the payment.
  kb.stripe.misbehave("drop");
  kb.stripe.misbehave("drop");
  assert.equal((await pay(key, "amount=200&currency=usd")).status, 502);
  await until("the alarm's first replay", () => kb.stripe.requests.length >= 2);
  const revoke = await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  assert.equal(revoke.status, 200, revoke.text);
  const answeredAt = Date.now();
  await sleep(1_500); // several alarm backoffs (100 ms doubling)
  const after = kb.stripe.requests.filter((r) => r.at > answeredAt);
  assert.deepEqual(after.map((r) => `${r.method} ${r.path}`), [], "nothing reached Stripe after the revoke answered");
  assert.equal(kb.stripe.charges.length, 0);
  const state = await kb.key(key);
  assert.deepEqual([state.status, state.reserved_usd, state.unresolved], ["revoked", 2, 1]);
});

test("wrong admin tokens never lock out the right one, and a short admin key turns the admin API off", async () => {
  const key = await kb.issueKey();
  const limited = [];
  for (let i = 0; i < 25; i++) {
    const wrong = await kb.call("GET", `/vault/keys/${key.key_id}`, { token: `${ADMIN_KEY}-wrong-${i}` });
    limited.push(wrong.status);
  }
  assert.deepEqual(limited.slice(0, 20), Array(20).fill(401));
  assert.deepEqual(limited.slice(20), Array(5).fill(429), "failures past the limit are slowed");
  assert.equal((await kb.call("GET", `/vault/keys/${key.key_id}`)).status, 200, "the right token still works");
  const revoke = await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  assert.equal(revoke.status, 200, "and can revoke");

  const weak = await startKeybrake({ vars: { KEYBRAKE_API_KEY: "kb_admin_too_short" } });
  try {
    const refused = await weak.call("POST", "/vault/keys", {
      token: "kb_admin_too_short",
      body: { vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] },
    });
    assert.equal(refused.status, 503);
    assert.equal(refused.json.error.type, "admin_not_configured");
    assert.match(refused.json.error.message, /KEYBRAKE_API_KEY/);
    assert.match(refused.json.error.message, /32 characters/);
  } finally {
    await weak.close();
  }
});

test("money parameters in the query string of a priced call are refused, not forwarded", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 5 });
  const sneaky = await pay(key, "amount=100&currency=usd", { path: "/v1/payment_intents?amount=100000" });
  assert.equal(sneaky.status, 400, sneaky.text);
  assert.match(sneaky.json.error.message, /query string/);
  const also = await pay(key, "currency=usd", { path: "/v1/payment_intents?amount=100" });
  assert.equal(also.status, 400);
  assert.equal(kb.stripe.requests.length, 0);
  assert.equal((await kb.settled(key)).spent_usd, 0);
});

test("a client that disconnects mid-call cannot stop the settlement", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  kb.stripe.misbehave({ delay: 800 });
  // A raw connection, closed once the call has reached Stripe: the runtime then cancels the
  // request's own work, and only what runs in waitUntil goes on.
  const body = "amount=150&currency=usd";
  const socket = net.connect(kb.port, "127.0.0.1");
  socket.on("error", () => {});
  socket.write(
    `POST /v1/payment_intents HTTP/1.1\r\nHost: 127.0.0.1:${kb.port}\r\nAuthorization: Bearer ${key.vault_key}\r\n` +
      `Content-Type: application/x-www-form-urlencoded\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
  await until("the call to reach Stripe", () => kb.stripe.requests.length === 1);
  socket.destroy();
  // Settled from the vendor's own answer within the call's time, long before the sweep of lost
  // calls (2 × the upstream timeout + 1 s) could mark it unknown.
  const state = await kb.settled(key, 3_000);
  assert.deepEqual([state.spent_usd, state.unresolved], [1.5, 0]);
  const audit = await kb.auditUntil({ key_id: key.key_id }, (p) => p.count === 1);
  assert.equal(audit.calls[0].outcome, "settled");
  assert.match(audit.calls[0].vendor_object_id, /^pi_fake/);
});

test("vendor_unreachable carries the Idempotency-Key the call went out under, so a retry is safe", async () => {
  const key = await kb.issueKey({ daily_usd_cap: 10 });
  kb.stripe.misbehave("hang"); // Stripe charges, then the answer is lost
  const lost = await pay(key, "amount=150&currency=usd");
  assert.equal(lost.status, 502);
  assert.equal(lost.json.error.type, "vendor_unreachable");
  const made = lost.headers.get("x-keybrake-idempotency-key");
  assert.match(made ?? "", new RegExp(`^kb_${key.key_id}_\\d+$`));
  assert.equal(lost.headers.get("x-keybrake-key-id"), key.key_id);
  const retry = await until("the retry to be answered", async () => {
    const r = await pay(key, "amount=150&currency=usd", { idempotencyKey: made });
    return r.status === 200 ? r : null;
  });
  assert.equal(retry.json.id, kb.stripe.charges[0].id);
  assert.equal(kb.stripe.charges.length, 1);
  assert.equal((await kb.settled(key)).spent_usd, 1.5);
});

test("an Idempotency-Key made for another vault key is refused", async () => {
  const a = await kb.issueKey({ daily_usd_cap: 10 });
  const b = await kb.issueKey({ daily_usd_cap: 10 });
  const first = await pay(a, "amount=150&currency=usd");
  assert.equal(first.status, 200);
  const made = first.headers.get("x-keybrake-idempotency-key");
  const stolen = await pay(b, "amount=150&currency=usd", { idempotencyKey: made });
  assert.equal(stolen.status, 400, stolen.text);
  assert.match(stolen.json.error.message, /kb_/);
  assert.equal(kb.stripe.requests.length, 1, "b never reached Stripe under a's key");
  const own = await pay(a, "amount=150&currency=usd", { idempotencyKey: made });
  assert.equal(own.json.id, first.json.id, "a may retry with its own");
});

test("Twilio holds are upper bounds: other NANP countries, <Dial>, MMS", async () => {
  const key = await kb.issueKey({
    vendor: "twilio",
    daily_usd_cap: 1,
    allowed_endpoints: ["POST /2010-04-01/Accounts/{AccountSid}/Calls.json", "POST /2010-04-01/Accounts/{AccountSid}/Messages.json"],
  });
  const client = await twilioClient(kb, key.vault_key);
  const say = "<Response><Say>Your order has shipped.</Say></Response>";
  // Jamaica is +1 but not US-priced: $1 buys two minutes at $0.35, not 71 at the US rate.
  await client.calls.create({ to: "+18765550100", from: "+15005550006", twiml: say });
  assert.equal(new URLSearchParams(kb.twilio.requests.at(-1).body).get("TimeLimit"), "120");
  const before = kb.twilio.requests.length;
  await assert.rejects(
    client.calls.create({ to: "+14155550100", from: "+15005550006", twiml: "<Response><Dial>+15005550006</Dial></Response>" }),
    (e) => e.status === 422 && /Dial/.test(e.message),
  );
  await assert.rejects(
    client.calls.create({ to: "+14155550100", from: "+15005550006", url: "https://example.test/twiml" }),
    (e) => e.status === 422,
  );
  await assert.rejects(
    client.messages.create({ to: "+14155550100", from: "+15005550006", contentSid: "HX0123", body: "hi" }),
    (e) => e.status === 422,
  );
  assert.equal(kb.twilio.requests.length, before, "none reached Twilio");

  // An MMS holds an MMS price ($0.04 + the $0.001 failure fee), not one SMS segment.
  const mmsKey = await kb.issueKey({
    vendor: "twilio",
    daily_usd_cap: 0.05,
    allowed_endpoints: ["POST /2010-04-01/Accounts/{AccountSid}/Messages.json"],
  });
  const mms = await twilioClient(kb, mmsKey.vault_key);
  await mms.messages.create({ to: "+14155550100", from: "+15005550006", body: "hi", sendAsMms: true });
  await assert.rejects(
    mms.messages.create({ to: "+14155550100", from: "+15005550006", body: "hi", sendAsMms: true }),
    (e) => e.status === 429,
  );
});

test("Twilio through an API key: the account stays pinned, and the account resource is refused", async () => {
  const apiKeyed = await startKeybrake({
    vars: { TWILIO_API_KEY_SID, TWILIO_API_KEY_SECRET },
    twilio: { apiKeySid: TWILIO_API_KEY_SID, apiKeySecret: TWILIO_API_KEY_SECRET },
  });
  try {
    const key = await apiKeyed.issueKey({
      vendor: "twilio",
      daily_usd_cap: 1,
      allowed_endpoints: ["POST /2010-04-01/Accounts/{AccountSid}/Messages.json", `GET /2010-04-01/Accounts/${TWILIO_ACCOUNT_SID}.json`],
    });
    const client = await twilioClient(apiKeyed, key.vault_key);
    const message = await client.messages.create({ to: "+14155550100", from: "+15005550006", body: "hi" });
    assert.match(message.sid, /^SM/);
    const seen = apiKeyed.twilio.requests.at(-1);
    const keyed = await apiKeyed.call("POST", "/twilio/2010-04-01/Accounts/AC1/Messages.json", {
      token: key.vault_key,
      body: "To=%2B14155550100&From=%2B15005550006&Body=hi",
      headers: { "content-type": "application/x-www-form-urlencoded", "idempotency-key": "client-key-1" },
    });
    assert.equal(keyed.status, 201, keyed.text);
    assert.equal(apiKeyed.twilio.requests.at(-1).headers["idempotency-key"], undefined, "Twilio's allowlist has no Idempotency-Key");
    const [user] = Buffer.from(seen.headers.authorization.slice(6), "base64").toString().split(":");
    assert.equal(user, TWILIO_API_KEY_SID, "authenticated with the API key");
    assert.equal(seen.path, `/2010-04-01/Accounts/${TWILIO_ACCOUNT_SID}/Messages.json`, "on the pinned account");
    const account = await apiKeyed.call("GET", `/twilio/2010-04-01/Accounts/${TWILIO_ACCOUNT_SID}.json`, { token: key.vault_key });
    assert.equal(account.status, 403, account.text);
    assert.equal(apiKeyed.twilio.requests.length, 2, "the account resource, with its auth token, was never fetched");
  } finally {
    await apiKeyed.close();
  }
});
