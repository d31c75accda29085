// A recording HTTP server on loopback that vendor fakes build on. It keeps every request it
// receives, so tests can assert what reached the "vendor", and it can misbehave on demand.
import http from "node:http";

/**
 * `handle(record, send, behaviour)` answers one request; `send(status, payload, headers)`
 * writes JSON. `screen(record, send, requests)` runs first, on arrival, before any queued
 * delay, and returns true if it answered (a fake's 409 for a key whose first call still runs).
 * Returns the server's url, its request log and controls.
 *
 * Behaviours a test can queue with `misbehave` (each takes the next request):
 * - a status the vendor fake understands (429 refuses before acting; 500 acts, then fails to
 *   say so; 402 declines);
 * - "hang": acts, then never answers (the proxy's timeout must fire);
 * - "reset": acts, then drops the connection;
 * - "drop": drops the connection before acting (the request never reached the vendor's logic);
 * - `{ delay: ms }`: acts only after `ms`, then answers. While it waits the request is
 *   "running": fakes that honour Idempotency-Key answer a concurrent retry with 409;
 * - `{ delay: ms, then: behaviour }`: waits, then applies `behaviour` ("hang", "reset", 500…).
 *
 * `misbehave(behaviour, when)` targets the behaviour at the next request for which
 * `when(record)` holds, so concurrent tests can aim a fault at one call of theirs.
 */
export async function startRecordingServer({ port = 0, handle, screen = () => false }) {
  const requests = [];
  const queue = []; // { behaviour, when } queued by tests: each takes the next request it matches
  let nextRequestId = 1;

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const record = {
        method: req.method,
        url: req.url,
        path: req.url.split("?")[0],
        headers: { ...req.headers },
        body: Buffer.concat(chunks).toString("utf8"),
        at: Date.now(),
      };
      const answerNow = (status, payload, headers = {}) => {
        res.writeHead(status, { "content-type": "application/json", "request-id": `req_${nextRequestId++}`, ...headers });
        res.end(JSON.stringify(payload));
      };
      const screened = screen(record, answerNow, requests);
      requests.push(record);
      if (screened) return;
      const queued = queue.findIndex((q) => q.when(record));
      let behaviour = queued < 0 ? undefined : queue.splice(queued, 1)[0].behaviour;
      if (behaviour === "drop") return req.socket.destroy();
      const delay = typeof behaviour === "object" && behaviour !== null ? behaviour.delay : 0;
      if (delay) behaviour = behaviour.then;
      // The vendor does its work first; a "hang" or "reset" then loses the answer, as a
      // network fault after the vendor has acted would.
      const send = (status, payload, headers = {}) => {
        if (behaviour === "hang") return; // never answers: the proxy's timeout must fire
        if (behaviour === "reset") return req.socket.destroy();
        if (res.destroyed || res.writableEnded) return;
        res.writeHead(status, { "content-type": "application/json", "request-id": `req_${nextRequestId++}`, ...headers });
        res.end(JSON.stringify(payload));
      };
      if (!delay) return handle(record, send, behaviour);
      record.running = true;
      setTimeout(() => {
        record.running = false;
        record.actedAt = Date.now();
        handle(record, send, behaviour);
      }, delay);
    });
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  const address = server.address();
  return {
    url: `http://127.0.0.1:${address.port}`,
    port: address.port,
    requests,
    /** Make the next request misbehave; see the behaviours above. */
    misbehave(behaviour, when = () => true) {
      queue.push({ behaviour, when });
    },
    clearQueue() {
      queue.length = 0;
      requests.length = 0;
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Decodes `Authorization: Basic ...` into [user, password]. */
export function basicAuth(header) {
  if (!header?.startsWith("Basic ")) return [];
  const text = Buffer.from(header.slice(6), "base64").toString("utf8");
  const i = text.indexOf(":");
  return i < 0 ? [] : [text.slice(0, i), text.slice(i + 1)];
}
