// The bench's vendor: a minimal Stripe-like server that answers at once and counts what it
// receives. It runs in a child process so that its event loop never competes with the load
// generator's; the parent controls it over the IPC channel.
//
//   parent: const fake = await startVendorFake(); await fake.counts(); await fake.stop();
//   child:  node bench/vendor-fake.mjs --child   (started by startVendorFake)
import { fork } from "node:child_process";
import http from "node:http";
import { fileURLToPath } from "node:url";

const CHILD_FLAG = "--child";

// ---------------------------------------------------------------------------------------------
// Child: the server.

function serve() {
  let total = 0;
  let nextId = 1;
  // POST /v1/payment_intents received, by Authorization header: the parent tells calls the
  // proxy forwarded (they carry the real secret) from calls it sent straight here.
  const intents = new Map();

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      total++;
      let status = 404;
      let payload = { error: { type: "invalid_request_error", message: "Unrecognized request URL" } };
      if (req.method === "POST" && req.url.split("?")[0] === "/v1/payment_intents") {
        const auth = req.headers.authorization ?? "";
        intents.set(auth, (intents.get(auth) ?? 0) + 1);
        const amount = Number(new URLSearchParams(Buffer.concat(chunks).toString("utf8")).get("amount"));
        status = 200;
        payload = { id: `pi_bench${nextId++}`, object: "payment_intent", amount, currency: "usd" };
      }
      const text = JSON.stringify(payload);
      res.writeHead(status, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(text),
        "request-id": `req_bench${total}`,
      });
      res.end(text);
    });
  });
  // Never close an idle keep-alive connection: the proxy could pick it up just as it closes,
  // and a forwarded call lost that way would be a 502, not a measurement.
  server.keepAliveTimeout = 0;

  process.on("message", (msg) => {
    if (msg?.type === "counts") {
      process.send({ type: "counts", id: msg.id, total, intents: Object.fromEntries(intents) });
    } else if (msg?.type === "reset") {
      total = 0;
      intents.clear();
      process.send({ type: "reset", id: msg.id });
    }
  });
  // The parent went away (finished or crashed): never outlive it.
  process.on("disconnect", () => process.exit(0));

  // A deep backlog: a burst opens hundreds of upstream connections at once.
  server.listen(0, "127.0.0.1", 4096, () => process.send({ type: "ready", port: server.address().port }));
}

// ---------------------------------------------------------------------------------------------
// Parent: start, query and stop the child.

export async function startVendorFake({ startTimeoutMs = 15_000 } = {}) {
  const child = fork(fileURLToPath(import.meta.url), [CHILD_FLAG], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("vendor fake did not start")), startTimeoutMs);
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`vendor fake exited with ${code} before it was ready`)));
    child.on("message", (msg) => {
      if (msg?.type === "ready") {
        clearTimeout(timer);
        resolve(msg.port);
      }
    });
  });

  let nextId = 1;
  function ask(type, timeoutMs = 10_000) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.off("message", onMessage);
        reject(new Error(`vendor fake did not answer ${type}`));
      }, timeoutMs);
      function onMessage(msg) {
        if (msg?.id !== id) return;
        clearTimeout(timer);
        child.off("message", onMessage);
        resolve(msg);
      }
      child.on("message", onMessage);
      child.send({ type, id });
    });
  }

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    pid: child.pid,
    /** `{ total, intents: { [authorization]: count } }` since the last reset. */
    counts: () => ask("counts"),
    reset: () => ask("reset"),
    /** Stops the child: a polite SIGTERM, then SIGKILL if it lingers. */
    async stop(graceMs = 3_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

if (process.argv[2] === CHILD_FLAG && process.send) serve();
