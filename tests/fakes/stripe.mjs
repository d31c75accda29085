// A small Stripe-compatible server on loopback. It records every request it receives, so tests
// can assert what reached "Stripe", and it can misbehave on demand. `make dev` runs it as the
// local Stripe simulator: `node tests/fakes/stripe.mjs --port 12111`.
import http from "node:http";

export async function startStripeFake({ port = 0, secret = null } = {}) {
  const requests = [];
  const charges = []; // every money-moving object created: what "Stripe" actually charged
  const idempotent = new Map(); // Idempotency-Key -> stored answer, replayed like Stripe does
  let nextId = 1;
  // Behaviours queued by tests: each takes the next matching request.
  const queue = [];

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const record = { method: req.method, url: req.url, headers: { ...req.headers }, body };
      requests.push(record);
      handle(record, req, res);
    });
  });

  function send(res, status, payload, headers = {}) {
    const text = JSON.stringify(payload);
    res.writeHead(status, { "content-type": "application/json", "request-id": `req_${nextId++}`, ...headers });
    res.end(text);
  }

  function handle(record, req, res) {
    const path = record.url.split("?")[0];
    if (secret !== null && record.headers.authorization !== `Bearer ${secret}`) {
      return send(res, 401, { error: { type: "invalid_request_error", message: "Invalid API Key provided" } });
    }
    const idemKey = record.headers["idempotency-key"];
    if (idemKey && idempotent.has(idemKey)) {
      const stored = idempotent.get(idemKey);
      return send(res, stored.status, stored.payload, { "idempotent-replayed": "true" });
    }
    const behaviour = queue.shift();
    if (behaviour === "hang") return; // never answers; the proxy's timeout must fire
    if (behaviour === "reset") return req.socket.destroy();
    if (behaviour === 429) {
      return send(res, 429, { error: { type: "rate_limit_error", message: "Too many requests" } });
    }
    if (behaviour === 402) {
      return send(res, 402, { error: { type: "card_error", code: "card_declined", message: "Your card was declined." } });
    }

    const form = new URLSearchParams(record.body);
    const money = path.match(/^\/v1\/(payment_intents|charges|refunds|transfers|payouts)$/);
    let status = 200;
    let payload;
    if (req.method === "POST" && money) {
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
      charges.push({ id: payload.id, amount, currency: payload.currency });
      if (behaviour === 500) {
        // Charged, then failed to say so: the proxy cannot know the outcome.
        status = 500;
        payload = { error: { type: "api_error", message: "An unknown error occurred" } };
      }
    } else if (req.method === "GET" && path.startsWith("/v1/")) {
      payload = { id: path.split("/").pop(), object: "unknown" };
    } else {
      status = 404;
      payload = { error: { type: "invalid_request_error", message: `Unrecognized request URL (${req.method}: ${path})` } };
    }
    if (idemKey && status !== 429) idempotent.set(idemKey, { status, payload });
    send(res, status, payload);
  }

  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  const address = server.address();
  return {
    url: `http://127.0.0.1:${address.port}`,
    port: address.port,
    requests,
    charges,
    /** Make the next request answer with `behaviour`: 402, 429, 500, "hang" or "reset". */
    misbehave(behaviour) {
      queue.push(behaviour);
    },
    reset() {
      requests.length = 0;
      charges.length = 0;
      queue.length = 0;
      idempotent.clear();
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const portArg = process.argv.indexOf("--port");
  const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 12111;
  const fake = await startStripeFake({ port });
  console.log(`Stripe simulator listening on ${fake.url}`);
  const log = setInterval(() => {}, 1 << 30);
  process.on("SIGINT", () => { clearInterval(log); fake.close().then(() => process.exit(0)); });
  process.on("SIGTERM", () => { clearInterval(log); fake.close().then(() => process.exit(0)); });
}
