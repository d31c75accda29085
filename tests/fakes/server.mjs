// A recording HTTP server on loopback that vendor fakes build on. It keeps every request it
// receives, so tests can assert what reached the "vendor", and it can misbehave on demand.
import http from "node:http";

/**
 * `handle(record, send)` answers one request; `send(status, payload, headers)` writes JSON.
 * Returns the server's url, its request log and controls.
 */
export async function startRecordingServer({ port = 0, handle }) {
  const requests = [];
  const queue = []; // behaviours queued by tests: each takes the next request
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
      };
      requests.push(record);
      const behaviour = queue.shift();
      // The vendor does its work first; a "hang" or "reset" then loses the answer, as a
      // network fault after the vendor has acted would.
      const send = (status, payload, headers = {}) => {
        if (behaviour === "hang") return; // never answers: the proxy's timeout must fire
        if (behaviour === "reset") return req.socket.destroy();
        res.writeHead(status, { "content-type": "application/json", "request-id": `req_${nextRequestId++}`, ...headers });
        res.end(JSON.stringify(payload));
      };
      handle(record, send, behaviour);
    });
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  const address = server.address();
  return {
    url: `http://127.0.0.1:${address.port}`,
    port: address.port,
    requests,
    /**
     * Make the next request misbehave: a status the vendor fake understands (429 refuses
     * before acting; 500 acts, then fails to say so), or "hang" / "reset" after acting.
     */
    misbehave(behaviour) {
      queue.push(behaviour);
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
