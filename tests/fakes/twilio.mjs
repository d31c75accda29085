// A small Twilio-compatible fake: Messages and Calls under one account. Like Twilio, it
// answers `price: null` on create and fills the price in later (after `pricedAfterPolls`
// fetches of the object), as a negative string in USD.
import { startRecordingServer, basicAuth } from "./server.mjs";

export async function startTwilioFake({ port = 0, accountSid, authToken, apiKeySid = null, apiKeySecret = null, smsPrice = "0.0079", minutePrice = "0.0130", pricedAfterPolls = 1 } = {}) {
  const objects = new Map(); // sid -> { kind, record, polls, price }
  let next = 1;
  const sid = (prefix) => `${prefix}${String(next++).padStart(32, "0")}`;

  const server = await startRecordingServer({
    port,
    handle(record, send, behaviour) {
      const [user, password] = basicAuth(record.headers.authorization);
      // The account's own credential, or an API key (SK…) and its secret, as Twilio accepts.
      const authenticated =
        (user === accountSid && password === authToken) || (apiKeySid !== null && user === apiKeySid && password === apiKeySecret);
      if (!authenticated) {
        return send(401, { code: 20003, message: "Authenticate", more_info: "https://www.twilio.com/docs/errors/20003", status: 401 });
      }
      const account = record.path.match(/^\/2010-04-01\/Accounts\/([^/]+)\.json$/);
      if (record.method === "GET" && account && account[1] === accountSid) {
        // Like Twilio: the account resource carries the account's own auth token.
        return send(200, { sid: accountSid, friendly_name: "fake", status: "active", auth_token: authToken });
      }
      const m = record.path.match(/^\/2010-04-01\/Accounts\/([^/]+)\/(Messages|Calls)(?:\/([^/]+))?\.json$/);
      if (!m || m[1] !== accountSid) {
        return send(404, { code: 20404, message: "The requested resource was not found", status: 404 });
      }
      const [, , kind, objectSid] = m;
      if (behaviour === 429) return send(429, { code: 20429, message: "Too Many Requests", status: 429 });
      if (record.method === "POST" && !objectSid) {
        const form = new URLSearchParams(record.body);
        const object = {
          sid: sid(kind === "Messages" ? "SM" : "CA"),
          account_sid: accountSid,
          to: form.get("To"),
          from: form.get("From"),
          status: "queued",
          price: null,
          price_unit: "USD",
        };
        if (kind === "Messages") {
          object.body = form.get("Body");
          object.num_segments = "1";
        } else {
          object.time_limit = form.get("TimeLimit");
        }
        const unitPrice = kind === "Messages" ? smsPrice : minutePrice;
        objects.set(object.sid, { kind, object, polls: 0, price: `-${unitPrice}` });
        return send(201, object);
      }
      if (record.method === "GET" && objectSid && objects.has(objectSid)) {
        const entry = objects.get(objectSid);
        entry.polls += 1;
        const priced = entry.polls > pricedAfterPolls;
        return send(200, { ...entry.object, status: priced ? "delivered" : "sent", price: priced ? entry.price : null });
      }
      return send(404, { code: 20404, message: "The requested resource was not found", status: 404 });
    },
  });
  return {
    ...server,
    objects,
    /** Objects Twilio created: what it bills for. */
    created(kind) {
      return [...objects.values()].filter((o) => o.kind === kind);
    },
    reset() {
      server.clearQueue();
      objects.clear();
    },
  };
}
