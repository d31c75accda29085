// The load generator's HTTP client: plain node:http over keep-alive sockets, so the figures
// measure the servers, not a client library. Every request has a timeout and every loop a
// count and a deadline, so nothing here can run forever.
import http from "node:http";
import { performance } from "node:perf_hooks";

/** A keep-alive agent that can hold `sockets` connections open, busy or idle. */
export function keepAliveAgent(sockets = 1) {
  return new http.Agent({ keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets, scheduling: "lifo" });
}

/**
 * One timed request. Resolves `{ status, headers, body, ms }`; `ms` runs from the call to the
 * last byte of the answer. Rejects on a network error or after `timeoutMs`.
 */
export function timedRequest(baseUrl, { agent, method = "GET", path = "/", headers = {}, body, timeoutMs = 30_000 }) {
  const url = new URL(baseUrl);
  const payload = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body);
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request(
      {
        agent,
        host: url.hostname,
        port: url.port,
        method,
        path,
        headers: payload === undefined ? headers : { ...headers, "content-length": payload.length },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode,
            headers: res.headers,
            body: Buffer.concat(chunks).toString("utf8"),
            ms: performance.now() - started,
          }),
        );
        res.on("error", reject);
      },
    );
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on("error", reject);
    req.on("close", () => clearTimeout(timer));
    req.end(payload);
  });
}

/**
 * Runs `task(i)` for i = 0..count-1 with at most `concurrency` in flight, starting no new task
 * after `deadline` (a performance.now() value). Resolves `{ results, done, truncated }`.
 */
export async function boundedPool(count, concurrency, deadline, task) {
  const results = new Array(count);
  let next = 0;
  async function lane() {
    while (next < count && performance.now() < deadline) {
      const i = next++;
      results[i] = await task(i);
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, count)) }, lane));
  return { results: results.slice(0, next), done: next, truncated: next < count };
}

/** A promise for `ms` milliseconds. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
