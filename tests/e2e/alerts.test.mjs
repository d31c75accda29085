// Alerts end to end: webhooks set by the admin API, events decided in the key's object and
// delivered by its alarm, signed, retried, logged. A local receiver checks every signature.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useKeybrake, stripeClient, twilioClient, until, ADMIN_KEY } from "./harness.mjs";
import { startWebhookReceiver, verifyKeybrakeSignature } from "../fakes/webhook-receiver.mjs";

const kb = useKeybrake();

/** A receiver with a webhook pointed at it; the webhook is deleted when the test ends. */
async function receiver(t, events = ["*"]) {
  const r = await startWebhookReceiver();
  const res = await kb.call("POST", "/vault/webhooks", { body: { url: r.url, events } });
  assert.equal(res.status, 201, res.text);
  r.state.secret = res.json.secret;
  r.hook = res.json;
  t.after(async () => {
    await kb.call("DELETE", `/vault/webhooks/${res.json.id}`);
    await r.close();
  });
  return r;
}

test("a webhook's secret is shown once; bad bodies and wrong tokens are refused", async (t) => {
  const r = await receiver(t, ["key.threshold_crossed", "key.cap_hit"]);
  assert.match(r.hook.id, /^wh_[0-9a-f]{16}$/);
  assert.match(r.hook.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(r.hook.events, ["key.threshold_crossed", "key.cap_hit"]);
  const list = await kb.call("GET", "/vault/webhooks");
  assert.equal(list.status, 200);
  assert.ok(list.json.data.some((w) => w.id === r.hook.id));
  assert.ok(!list.text.includes(r.hook.secret) && !list.text.includes("whsec_"), "listings never show a secret");

  for (const body of [
    { url: "http://example.com/hook", events: ["*"] },
    { url: r.url, events: [] },
    { url: r.url, events: ["key.spent"] },
    { url: r.url, events: ["*"], secret: "mine" },
  ]) {
    const res = await kb.call("POST", "/vault/webhooks", { body });
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.json.error.type, "invalid_request");
  }
  for (const [method, path] of [["POST", "/vault/webhooks"], ["GET", "/vault/webhooks"], ["GET", "/vault/webhooks/deliveries"], ["DELETE", `/vault/webhooks/${r.hook.id}`]]) {
    const res = await kb.call(method, path, { token: "wrong", body: method === "POST" ? { url: r.url, events: ["*"] } : undefined });
    assert.equal(res.status, 401, `${method} ${path}`);
  }
  assert.equal((await kb.call("DELETE", "/vault/webhooks/wh_0000000000000000")).status, 404);

  for (const thresholds of [[0], [1.5], [0.5, 0.5], "0.5", Array.from({ length: 11 }, (_, i) => (i + 1) / 20)]) {
    const res = await kb.call("POST", "/vault/keys", {
      body: { vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"], alert_thresholds: thresholds },
    });
    assert.equal(res.status, 400, JSON.stringify(thresholds));
    assert.match(res.json.error.message, /alert_thresholds/);
  }
});

test("each threshold fires once under a parallel burst, and the cap hit once, all signed", async (t) => {
  const r = await receiver(t);
  const key = await kb.issueKey({ daily_usd_cap: 10, alert_thresholds: [1.0, 0.5, 0.8], agent_run_label: "alerts/burst" });
  assert.deepEqual((await kb.key(key)).alert_thresholds, [0.5, 0.8, 1]);
  const stripe = await stripeClient(kb, key.vault_key, { maxNetworkRetries: 0 });
  const charge = () => stripe.paymentIntents.create({ amount: 100, currency: "usd" }).then(() => "ok", (e) => e.statusCode ?? e.message);
  const results = await Promise.all(Array.from({ length: 16 }, charge));
  assert.equal(results.filter((x) => x === "ok").length, 10);
  assert.equal(results.filter((x) => x === 429).length, 6);

  const mine = (e) => e.data.key_id === key.key_id;
  await until("three thresholds and a cap hit", () => r.events(mine).length >= 4, 10_000);
  // A second burst on the same day fires nothing more.
  await Promise.all(Array.from({ length: 4 }, charge));
  await new Promise((resolve) => setTimeout(resolve, 800));

  const arrived = r.state.arrivals.filter((a) => a.event?.data?.key_id === key.key_id);
  assert.ok(arrived.every((a) => a.valid), arrived.map((a) => a.error).join(", "));
  assert.equal(new Set(arrived.map((a) => a.id)).size, arrived.length, "each event arrived once");
  const crossed = r.events(mine).filter((e) => e.type === "key.threshold_crossed");
  assert.deepEqual(crossed.map((e) => e.data.threshold).sort(), [0.5, 0.8, 1]);
  assert.deepEqual(crossed.map((e) => e.data.threshold_usd).sort((a, b) => a - b), [5, 8, 10]);
  for (const e of crossed) {
    assert.equal(e.data.daily_usd_cap, 10);
    assert.ok(e.data.spent_usd >= e.data.threshold_usd);
    assert.equal(e.data.agent_run_label, "alerts/burst");
    assert.match(e.id, new RegExp(`^evt_${key.key_id}_\\d+_t\\d+$`));
  }
  const capHits = r.events(mine).filter((e) => e.type === "key.cap_hit");
  assert.equal(capHits.length, 1);
  // At the refusal the burst's money may still be held rather than spent.
  assert.equal(capHits[0].data.spent_usd + capHits[0].data.reserved_usd, 10);

  // A tampered body or another secret does not verify: the receiver's check can fail.
  const sample = arrived[0];
  const body = JSON.stringify(sample.event);
  const header = `t=${Math.floor(Date.now() / 1000)},v1=${"0".repeat(64)}`;
  assert.throws(() => verifyKeybrakeSignature(body, header, r.state.secret), /does not match/);

  const log = await kb.call("GET", `/vault/webhooks/deliveries?key_id=${key.key_id}`);
  assert.equal(log.status, 200);
  assert.equal(log.json.data.filter((d) => d.webhook_id === r.hook.id).length, 4);
  assert.ok(log.json.data.every((d) => d.ok && d.status === 200 && d.attempt === 1));
});

test("revoked and expired keys send events, retried through a receiver outage", async (t) => {
  const r = await receiver(t, ["key.revoked", "key.expired"]);
  r.state.down = true;
  const revoked = await kb.issueKey({ agent_run_label: "alerts/outage" });
  const expiring = await kb.issueKey({ agent_run_label: "alerts/outage", expires_in: "1s" });
  assert.equal((await kb.call("DELETE", `/vault/keys/${revoked.key_id}`)).status, 200);

  // While it is down, Keybrake keeps trying, with the same event id each time.
  const failed = await until("two failed attempts of each event", async () => {
    const ids = r.state.arrivals.filter((a) => a.down && a.valid).map((a) => a.id);
    const count = (id) => ids.filter((x) => x === id).length;
    return count(`evt_${revoked.key_id}_revoked`) >= 2 && count(`evt_${expiring.key_id}_expired`) >= 2 && ids;
  }, 15_000);
  assert.ok(failed.length >= 4);
  r.state.down = false;
  const events = await until("both events delivered", () => {
    const got = r.events((e) => e.data.agent_run_label === "alerts/outage");
    return got.length === 2 && got;
  }, 15_000);
  const byType = Object.fromEntries(events.map((e) => [e.type, e]));
  assert.equal(byType["key.revoked"].data.key_id, revoked.key_id);
  assert.ok(byType["key.revoked"].data.revoked_at);
  assert.equal(byType["key.expired"].data.key_id, expiring.key_id);

  const log = await kb.call("GET", `/vault/webhooks/deliveries?event_id=evt_${revoked.key_id}_revoked`);
  const attempts = log.json.data.filter((d) => d.webhook_id === r.hook.id);
  assert.ok(attempts.length >= 3, JSON.stringify(attempts));
  assert.equal(attempts[0].ok, true, "the newest attempt succeeded");
  assert.ok(attempts.slice(1).every((d) => !d.ok && d.status === 503));
  assert.deepEqual(attempts.map((d) => d.attempt), [...attempts.map((d) => d.attempt)].sort((a, b) => b - a));
});

test("a call whose outcome is unknown sends call.unknown_outcome", async (t) => {
  const r = await receiver(t, ["call.unknown_outcome"]);
  const key = await kb.issueKey({ agent_run_label: "alerts/unknown" });
  const stripe = await stripeClient(kb, key.vault_key, { maxNetworkRetries: 0 });
  kb.stripe.misbehave(500);
  await stripe.paymentIntents.create({ amount: 300, currency: "usd" }).catch(() => null);
  const [event] = await until("the unknown outcome event", () => {
    const got = r.events((e) => e.data.key_id === key.key_id);
    return got.length > 0 && got;
  }, 10_000);
  assert.equal(event.type, "call.unknown_outcome");
  assert.equal(event.data.status, 500);
  assert.equal(typeof event.data.reservation_id, "number");
});

test("a late Twilio price sends call.reconciled; the threshold fired once, on the estimate", async (t) => {
  const r = await receiver(t, ["call.reconciled", "key.threshold_crossed"]);
  const key = await kb.issueKey({
    vendor: "twilio",
    daily_usd_cap: 0.02,
    alert_thresholds: [0.25],
    agent_run_label: "alerts/twilio",
    allowed_endpoints: ["POST /2010-04-01/Accounts/{AccountSid}/Messages.json"],
  });
  const client = await twilioClient(kb, key.vault_key);
  await client.messages.create({ to: "+14155550100", from: "+15005550006", body: "hello" });
  const events = await until("the reconciled event and the threshold", () => {
    const got = r.events((e) => e.data.key_id === key.key_id);
    return got.length === 2 && got;
  }, 15_000);
  const reconciled = events.find((e) => e.type === "call.reconciled");
  const state = await kb.key(key);
  assert.equal(reconciled.data.cost_usd, state.spent_usd, "the event carries the vendor's real price");
  assert.equal(typeof reconciled.data.reconciliation_id, "number");
  const crossed = events.find((e) => e.type === "key.threshold_crossed");
  assert.equal(crossed.data.threshold, 0.25);
  assert.equal(crossed.data.threshold_usd, 0.005);
});

test("the admin token and vault keys never appear in an event or the delivery log", async (t) => {
  const r = await receiver(t, ["key.revoked"]);
  const key = await kb.issueKey({ agent_run_label: "alerts/secrets" });
  await kb.call("DELETE", `/vault/keys/${key.key_id}`);
  await until("the revoked event", () => r.events((e) => e.data.key_id === key.key_id).length === 1, 10_000);
  const raw = r.state.arrivals.map((a) => JSON.stringify(a.event)).join("\n");
  const log = (await kb.call("GET", "/vault/webhooks/deliveries?limit=500")).text;
  for (const text of [raw, log]) {
    assert.ok(!text.includes(ADMIN_KEY));
    assert.ok(!text.includes(key.vault_key));
    assert.ok(!text.includes(r.state.secret));
  }
});
