// A small Resend-compatible fake: single and batch sends with Resend's idempotency rules.
import { randomUUID } from "node:crypto";
import { startRecordingServer } from "./server.mjs";

export async function startResendFake({ port = 0, apiKey = null } = {}) {
  const sent = []; // every email "delivered"
  const idempotent = new Map(); // Idempotency-Key -> { body, payload }

  const server = await startRecordingServer({
    port,
    screen(record, send, requests) {
      const idemKey = record.headers["idempotency-key"];
      if (!idemKey || !requests.some((r) => r.running && r.headers["idempotency-key"] === idemKey)) return false;
      send(409, { statusCode: 409, name: "concurrent_idempotent_requests", message: "Same idempotency key used while original request is still in progress" });
      return true;
    },
    handle(record, send, behaviour) {
      if (apiKey !== null && record.headers.authorization !== `Bearer ${apiKey}`) {
        return send(401, { statusCode: 401, name: "validation_error", message: "API key is invalid" });
      }
      if (behaviour === 429) return send(429, { statusCode: 429, name: "rate_limit_exceeded", message: "Too many requests" });
      const idemKey = record.headers["idempotency-key"];
      if (idemKey && idempotent.has(idemKey)) {
        const stored = idempotent.get(idemKey);
        if (stored.body !== record.body) {
          return send(409, { statusCode: 409, name: "invalid_idempotent_request", message: "Same idempotency key used with a different request payload" });
        }
        return send(200, stored.payload);
      }
      let payload;
      if (record.method === "POST" && record.path === "/emails") {
        const email = JSON.parse(record.body);
        payload = { id: randomUUID() };
        sent.push({ id: payload.id, to: email.to });
      } else if (record.method === "POST" && record.path === "/emails/batch") {
        const emails = JSON.parse(record.body);
        payload = { data: emails.map((e) => ({ id: randomUUID(), to: e.to })) };
        payload.data.forEach((d) => sent.push({ id: d.id, to: d.to }));
        payload.data = payload.data.map(({ id }) => ({ id }));
      } else {
        return send(404, { statusCode: 404, name: "not_found", message: "Route not found" });
      }
      if (idemKey) idempotent.set(idemKey, { body: record.body, payload });
      send(200, payload);
    },
  });
  return {
    ...server,
    sent,
    reset() {
      server.clearQueue();
      sent.length = 0;
      idempotent.clear();
    },
  };
}
