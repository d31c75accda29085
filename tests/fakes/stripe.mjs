// A small Stripe-compatible fake: payment intents, charges, refunds, transfers and payouts,
// idempotent replays like Stripe's, and failures on demand. Like Stripe, it binds an
// Idempotency-Key to the first request's parameters (another body gets 400 idempotency_error),
// answers 409 while the first request under a key is still running, and reads parameters from
// a POST's query string as well as its body.
import { startRecordingServer } from "./server.mjs";

export async function startStripeFake({ port = 0, secret = null } = {}) {
  const charges = []; // every money-moving object created: what "Stripe" actually charged
  const idempotent = new Map(); // Idempotency-Key -> stored answer
  let nextId = 1;

  const server = await startRecordingServer({
    port,
    screen(record, send, requests) {
      const idemKey = record.headers["idempotency-key"];
      if (!idemKey) return false;
      if (requests.some((r) => r.running && r.headers["idempotency-key"] === idemKey)) {
        send(409, {
          error: {
            type: "invalid_request_error",
            code: "idempotency_key_in_use",
            message: "There is currently another in-progress request using this Idempotency-Key.",
          },
        });
        return true;
      }
      const stored = idempotent.get(idemKey);
      if (stored && (stored.body !== record.body || stored.url !== record.url)) {
        send(400, {
          error: {
            type: "idempotency_error",
            message: "Keys for idempotent requests can only be used with the same parameters they were first used with.",
          },
        });
        return true;
      }
      return false;
    },
    handle(record, send, behaviour) {
      if (secret !== null && record.headers.authorization !== `Bearer ${secret}`) {
        return send(401, { error: { type: "invalid_request_error", message: "Invalid API Key provided" } });
      }
      const idemKey = record.headers["idempotency-key"];
      if (idemKey && idempotent.has(idemKey)) {
        const stored = idempotent.get(idemKey);
        return send(stored.status, stored.payload, { "idempotent-replayed": "true" });
      }
      if (behaviour === 429) return send(429, { error: { type: "rate_limit_error", message: "Too many requests" } });
      if (behaviour === 402) {
        return send(402, { error: { type: "card_error", code: "card_declined", message: "Your card was declined." } });
      }
      const form = new URLSearchParams(record.body);
      // Stripe reads a POST's query parameters too.
      for (const [k, v] of new URLSearchParams(record.url.split("?")[1] ?? "")) form.set(k, v);
      const money = record.path.match(/^\/v1\/(payment_intents|charges|refunds|transfers|payouts)$/);
      let status = 200;
      let payload;
      if (record.method === "POST" && money) {
        const kind = money[1];
        const prefix = { payment_intents: "pi", charges: "ch", refunds: "re", transfers: "tr", payouts: "po" }[kind];
        const amount = Number(form.get("amount"));
        payload = {
          id: `${prefix}_fake${nextId++}`,
          object: kind.replace(/s$/, ""),
          amount,
          currency: form.get("currency"),
          customer: form.get("customer"),
          status: kind === "payment_intents" ? "requires_payment_method" : "succeeded",
        };
        charges.push({ id: payload.id, amount, currency: payload.currency, idempotencyKey: idemKey, at: Date.now() });
        if (behaviour === 500) {
          // Charged and stored, then an error in front of the API loses the answer: a
          // replay under the same key returns the stored success.
          if (idemKey) idempotent.set(idemKey, { status, payload, body: record.body, url: record.url });
          return send(500, { error: { type: "api_error", message: "An unknown error occurred" } });
        }
      } else if (record.method === "GET" && record.path.startsWith("/v1/")) {
        payload = { id: record.path.split("/").pop(), object: "unknown" };
      } else {
        status = 404;
        payload = { error: { type: "invalid_request_error", message: `Unrecognized request URL (${record.method}: ${record.path})` } };
      }
      if (idemKey) idempotent.set(idemKey, { status, payload, body: record.body, url: record.url });
      send(status, payload);
    },
  });
  return {
    ...server,
    charges,
    reset() {
      server.clearQueue();
      charges.length = 0;
      idempotent.clear();
    },
  };
}
