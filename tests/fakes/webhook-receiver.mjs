// A local webhook receiver for alert tests: it checks every delivery's Keybrake-Signature the
// way docs/alerts.md tells a receiver to, keeps the events, and can be taken down (answers
// 503) to make Keybrake retry.
import http from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Verifies `Keybrake-Signature: t=<secs>,v1=<hex>` over the raw body: HMAC-SHA256 of
 * `${t}.${body}` with the webhook's secret, and `t` within `toleranceSecs` of now. Returns the
 * parsed event, or throws saying why not.
 */
export function verifyKeybrakeSignature(rawBody, header, secret, { toleranceSecs = 300, nowSecs = Date.now() / 1000 } = {}) {
  const pairs = (header ?? "").split(",").map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]);
  const t = Number(pairs.find(([k]) => k === "t")?.[1]);
  const signatures = pairs.filter(([k]) => k === "v1").map(([, v]) => v);
  if (!Number.isInteger(t) || signatures.length === 0) throw new Error("no t= or v1= in Keybrake-Signature");
  if (Math.abs(nowSecs - t) > toleranceSecs) throw new Error("the signature's timestamp is too old");
  const expected = createHmac("sha256", secret).update(`${t}.${rawBody}`).digest();
  const ok = signatures.some((hex) => {
    const given = Buffer.from(hex, "hex");
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
  if (!ok) throw new Error("the signature does not match");
  return JSON.parse(rawBody);
}

export async function startWebhookReceiver() {
  const state = {
    secret: null,
    down: false,
    /** Every delivery that arrived: { id, type, valid, error, event, at } (including refused ones). */
    arrivals: [],
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      let event = null;
      let error = null;
      try {
        event = verifyKeybrakeSignature(raw, req.headers["keybrake-signature"], state.secret);
      } catch (e) {
        error = e.message;
      }
      state.arrivals.push({ id: event?.id ?? null, type: event?.type ?? null, valid: error === null, error, event, down: state.down, at: Date.now() });
      res.writeHead(state.down ? 503 : error ? 400 : 200, { "content-type": "text/plain" });
      res.end(state.down ? "down" : error ? "bad signature" : "ok");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}/hooks/keybrake`;
  return {
    url,
    state,
    /** Events received with a valid signature and a 2xx answer, de-duplicated by id. */
    events(filter = () => true) {
      const seen = new Map();
      for (const a of state.arrivals) if (a.valid && !a.down && filter(a.event)) seen.set(a.id, a.event);
      return [...seen.values()];
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
