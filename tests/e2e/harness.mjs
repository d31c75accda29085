// Runs the built Worker (build/index.js + wasm) in workerd through Miniflare, with real
// Durable Objects (SQLite) and a real D1 database. Only the vendors are faked, by servers on
// loopback that record what they receive.
//
// Under `node --test`, every test process also keeps a capture of what Keybrake showed the
// outside world, for the secrets sweep (`zz-secrets-sweep.test.mjs`) that runs last. See
// "Capture" below.
import { before, after, beforeEach } from "node:test";
import { Miniflare, Log, LogLevel } from "miniflare";
import {
  readFileSync,
  readdirSync,
  mkdtempSync,
  rmSync,
  mkdirSync,
  openSync,
  writeSync,
  closeSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, basename, relative, resolve, sep } from "node:path";
import { createInterface } from "node:readline";
import dc from "node:diagnostics_channel";
import net from "node:net";
import { startStripeFake } from "../fakes/stripe.mjs";
import { startTwilioFake } from "../fakes/twilio.mjs";
import { startResendFake } from "../fakes/resend.mjs";

export const ADMIN_KEY = "kb_admin_test_0f3c9a7d5e1b2c4d6e8f";
export const STRIPE_SECRET = "sk_test_keybrake_e2e_51HfakeSecretValue";
export const TWILIO_ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef";
export const TWILIO_AUTH_TOKEN = "twilio_auth_token_e2e_5f2b9c";
export const RESEND_API_KEY = "re_e2e_9Qm2kLx7VendorSecret";
/** A Twilio API key, for instances started with it (`vars: { TWILIO_API_KEY_SID, … }`). */
export const TWILIO_API_KEY_SID = "SK0123456789abcdef0123456789abcdef";
export const TWILIO_API_KEY_SECRET = "twilio_api_key_secret_e2e_7c1d";
/** Every vendor secret the Worker holds: none may ever reach a client, a log or an audit row. */
export const VENDOR_SECRETS = [STRIPE_SECRET, TWILIO_AUTH_TOKEN, RESEND_API_KEY, TWILIO_API_KEY_SECRET];
const ROOT = new URL("../..", import.meta.url).pathname;

// ---------------------------------------------------------------------------------------------
// Capture
//
// Each `node --test` run executes every test file in its own child process, one after another
// (`--test-concurrency=1`), all children of the same runner process. A test process that uses
// this harness appends JSON lines to `<CAPTURE_DIR>/run-<run id>/<test file>-<pid>.jsonl`, where
// the run id names the runner (its pid and, on Linux, its start time). Records:
//
// - `response`: every answer `call()` and `rawRequest()` received: status line, headers, body;
// - `key`: every vault key issued through `call()`;
// - `stream`: every byte received on every TCP connection this process opened to a Keybrake
//   instance, whatever the client: `call()`, raw sockets, and the stripe, twilio and resend
//   SDKs, which do not go through `call()`;
// - `log`: every line Miniflare logs (at any level, printed or not) and every line workerd
//   writes to stdout or stderr, which is where the Worker's console output goes;
// - `d1`: every row of every D1 table (audit rows, the key registry) at `close()`;
// - `state`: the printable strings of every file Durable Objects and D1 persisted, at `close()`.
//
// Capture is on when the process runs a test file of this directory under `node --test`, or
// when KEYBRAKE_CAPTURE_DIR is set; KEYBRAKE_CAPTURE=0 turns it off. Requests are never
// recorded: they carry tokens by design.

// The Worker logs the failures the tests provoke on purpose (timeouts, a D1 outage), and workerd
// prints a stack for the hostile requests it refuses itself: a passing run would be full of
// errors. They are kept, not printed; KEYBRAKE_E2E_LOGS=1 prints them as they come.
const PRINT_WORKER_LOGS = process.env.KEYBRAKE_E2E_LOGS === "1";

const E2E_DIR = dirname(new URL(import.meta.url).pathname);
/** Where captures go: KEYBRAKE_CAPTURE_DIR, else `keybrake-capture` in the system temp dir. */
export const CAPTURE_DIR = process.env.KEYBRAKE_CAPTURE_DIR || join(tmpdir(), "keybrake-capture");
const CAPTURING =
  process.env.KEYBRAKE_CAPTURE !== "0" &&
  (process.env.KEYBRAKE_CAPTURE_DIR !== undefined ||
    (process.env.NODE_TEST_CONTEXT !== undefined &&
      typeof process.argv[1] === "string" &&
      resolve(process.argv[1]).startsWith(E2E_DIR + sep)));
/** Matches a vault key anywhere in text: `kb_<vendor>_<64 hex key id>_<43 base64url secret>`. */
export const VAULT_KEY_PATTERN = /kb_(?:stripe|twilio|resend)_[0-9a-f]{64}_[A-Za-z0-9_-]{43}/g;

/**
 * Names the `node --test` run this process belongs to: the runner's pid, plus its start time
 * where /proc gives it, so a recycled pid cannot join an old run's captures.
 */
export function captureRunId(runnerPid = process.ppid) {
  try {
    const stat = readFileSync(`/proc/${runnerPid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
    return `${runnerPid}-${fields[19]}`; // field 22, starttime
  } catch {
    return String(runnerPid);
  }
}

/** The directory this run's captures go to. */
export function captureRunDir(runId = captureRunId()) {
  return join(CAPTURE_DIR, `run-${runId}`);
}

/** Opens a capture file for appending JSON lines. `close()` writes the final `end` record. */
export function openCapture(file) {
  mkdirSync(dirname(file), { recursive: true });
  const fd = openSync(file, "a");
  let open = true;
  return {
    file,
    write(record) {
      if (open) writeSync(fd, JSON.stringify({ t: Date.now(), ...record }) + "\n");
    },
    close() {
      if (!open) return;
      this.write({ kind: "end", pid: process.pid });
      open = false;
      closeSync(fd);
    },
  };
}

let capture = null;
const openStreams = new Set(); // flush functions of tapped connections still open
const keybrakePorts = new Set(); // ports of the Keybrake instances this process started

function record(entry) {
  if (!CAPTURING) return;
  if (capture === null) {
    const script = basename(process.argv[1] ?? "node");
    capture = openCapture(join(captureRunDir(), `${script}-${process.pid}.jsonl`));
    capture.write({ kind: "start", pid: process.pid, ppid: process.ppid, script });
    process.on("exit", () => {
      for (const flush of [...openStreams]) flush();
      capture.close();
    });
  }
  capture.write(entry);
}

/** Records a vault key found in an answer, so the sweep knows every key that was issued. */
function recordKeys(json) {
  if (json && typeof json === "object" && typeof json.vault_key === "string") {
    record({ kind: "key", key_id: json.key_id ?? null, vault_key: json.vault_key });
  }
}

/**
 * Taps a client socket: once it turns out to be connected to a Keybrake instance, every chunk
 * it receives is kept, and written as one `stream` record when it closes. The tap wraps the
 * socket's `push`, so it reads along without changing how the client consumes the data.
 */
function tapSocket(socket) {
  const push = socket.push;
  const chunks = [];
  let decided = false;
  let flushed = false;
  let port = null;
  const flush = () => {
    openStreams.delete(flush);
    if (flushed || chunks.length === 0) return;
    flushed = true;
    record({ kind: "stream", port, bytes: Buffer.concat(chunks).toString("base64") });
  };
  socket.push = function (chunk, encoding) {
    if (!decided) {
      decided = true;
      port = socket.remotePort ?? null;
      const loopback = ["127.0.0.1", "::1", "::ffff:127.0.0.1"].includes(socket.remoteAddress);
      if (!(loopback && keybrakePorts.has(port))) {
        socket.push = push;
        return push.call(this, chunk, encoding);
      }
      openStreams.add(flush);
      socket.once("close", flush);
    }
    if (chunk) chunks.push(Buffer.from(chunk, typeof chunk === "string" ? encoding : undefined));
    return push.call(this, chunk, encoding);
  };
}
if (CAPTURING) dc.subscribe("net.client.socket", ({ socket }) => tapSocket(socket));

/** A Miniflare log that also records every line it is given, printed or not. */
class CapturingLog extends Log {
  #leveled = false;
  constructor(level, lines) {
    super(level);
    this.lines = lines;
  }
  logWithLevel(level, message) {
    this.#keep(`miniflare:${LogLevel[level] ?? level}`, message);
    this.#leveled = true;
    try {
      if (PRINT_WORKER_LOGS) super.logWithLevel(level, message);
    } finally {
      this.#leveled = false;
    }
  }
  log(message) {
    if (!this.#leveled) this.#keep("miniflare", message);
    super.log(message);
  }
  #keep(source, message) {
    const line = String(message);
    this.lines.push({ source, line });
    record({ kind: "log", source, line });
  }
}

/** Collects every printable ASCII run of at least `min` characters in a buffer. */
function printableStrings(buffer, min = 16) {
  const found = new Set();
  let start = -1;
  for (let i = 0; i <= buffer.length; i++) {
    const b = i < buffer.length ? buffer[i] : 0;
    if (b >= 0x20 && b < 0x7f) {
      if (start < 0) start = i;
    } else if (start >= 0) {
      if (i - start >= min) found.add(buffer.toString("latin1", start, i));
      start = -1;
    }
  }
  return [...found];
}

/** Every row of every D1 table, as a `d1` record per table. */
async function recordD1(db, instance) {
  let tables = [];
  try {
    const listed = await db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all();
    tables = listed.results.map((r) => r.name).filter((n) => !n.startsWith("_cf_") && !n.startsWith("sqlite_"));
  } catch (e) {
    record({ kind: "d1", instance, table: null, error: String(e) });
  }
  for (const table of tables) {
    try {
      const rows = await db.prepare(`SELECT * FROM "${table.replaceAll('"', '""')}"`).all();
      record({ kind: "d1", instance, table, rows: rows.results });
    } catch (e) {
      record({ kind: "d1", instance, table, error: String(e) });
    }
  }
}

/** The printable strings of every file under a persistence directory, as `state` records. */
function recordPersisted(dir, instance) {
  const walk = (d) => {
    let entries = [];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile() && statSync(path).size > 0) {
        record({ kind: "state", instance, file: relative(dir, path), strings: printableStrings(readFileSync(path)) });
      }
    }
  };
  walk(dir);
}

/** Splits a raw HTTP/1.1 response into status, headers and body (decoding chunked framing). */
export function parseRawResponse(buffer) {
  const end = buffer.indexOf("\r\n\r\n");
  const head = buffer.toString("latin1", 0, end < 0 ? buffer.length : end);
  const [statusLine, ...headerLines] = head.split("\r\n");
  const match = /^HTTP\/\d\.\d (\d{3})(?: (.*))?$/.exec(statusLine);
  const headers = new Headers();
  for (const line of headerLines) {
    const i = line.indexOf(":");
    if (i > 0) {
      try {
        headers.append(line.slice(0, i).trim(), line.slice(i + 1).trim());
      } catch {
        // a header the Fetch API would refuse; the raw text still has it
      }
    }
  }
  let body = end < 0 ? Buffer.alloc(0) : buffer.subarray(end + 4);
  if (/chunked/i.test(headers.get("transfer-encoding") ?? "")) {
    const parts = [];
    let at = 0;
    for (;;) {
      const lineEnd = body.indexOf("\r\n", at);
      if (lineEnd < 0) break;
      const size = parseInt(body.toString("latin1", at, lineEnd), 16);
      if (!(size > 0)) break;
      parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  } else if (headers.has("content-length")) {
    body = body.subarray(0, Number(headers.get("content-length")));
  }
  const text = body.toString("utf8");
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return {
    status: match ? Number(match[1]) : null,
    statusText: match ? (match[2] ?? "") : null,
    statusLine,
    headers,
    json,
    text,
    raw: buffer,
  };
}

/** Whether a buffer holds one whole HTTP/1.1 answer (some servers keep the connection open). */
function answerComplete(buffer) {
  const end = buffer.indexOf("\r\n\r\n");
  if (end < 0) return false;
  const head = buffer.toString("latin1", 0, end);
  const status = Number(head.split(" ")[1]);
  if ((status >= 100 && status < 200) || status === 204 || status === 304) return true;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (length) return buffer.length - (end + 4) >= Number(length[1]);
  if (/\r\ntransfer-encoding:[^\r]*chunked/i.test(head)) return buffer.includes("\r\n0\r\n\r\n", end);
  return false; // delimited by the end of the connection
}

/**
 * Sends raw bytes to a Keybrake instance (or a port) on a fresh connection and parses the
 * answer: for what `fetch` cannot send, such as absolute-form targets, raw backslashes or
 * control characters, lower-case methods and malformed Host headers. Send `Connection: close`
 * so the answer ends with the connection. Returns what `call()` returns, plus the raw bytes;
 * `status` is null if nothing came back.
 */
export function rawRequest(target, bytes, { timeoutMs = 10_000 } = {}) {
  const port = typeof target === "number" ? target : target.port;
  return new Promise((resolveAnswer) => {
    const socket = net.connect(port, "127.0.0.1");
    const chunks = [];
    let settled = false;
    const finish = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const answer = parseRawResponse(Buffer.concat(chunks));
      if (error && answer.status === null) answer.error = String(error);
      record({
        kind: "response",
        via: "raw",
        status: answer.status,
        statusText: answer.statusText,
        headers: [...answer.headers],
        body: answer.raw.toString("latin1"),
      });
      recordKeys(answer.json);
      resolveAnswer(answer);
    };
    const timer = setTimeout(() => finish(new Error(`no complete answer within ${timeoutMs} ms`)), timeoutMs);
    socket.on("data", (c) => {
      chunks.push(c);
      if (answerComplete(Buffer.concat(chunks))) finish();
    });
    socket.on("end", () => finish());
    socket.on("close", () => finish());
    // The server may answer and close before reading a large body: keep what it said.
    socket.on("error", (e) => finish(e));
    socket.write(typeof bytes === "string" ? Buffer.from(bytes, "latin1") : bytes);
  });
}

/**
 * The Miniflare options that run the built Worker as wrangler.toml describes it: its modules,
 * compatibility date, Durable Objects and D1, persisted under `persist`, listening on a free
 * loopback port. Tests and the benchmark add their own bindings and log.
 */
export function workerOptions(persist) {
  const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
  const compatibilityDate = toml.match(/^compatibility_date\s*=\s*"([^"]+)"/m)?.[1];
  if (!compatibilityDate) throw new Error("wrangler.toml has no compatibility_date");
  return {
    modules: true,
    scriptPath: join(ROOT, "build/index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate,
    durableObjects: {
      VAULT_KEYS: { className: "VaultKey", useSQLite: true },
      ADMIN_GUARD: { className: "AdminGuard", useSQLite: true },
    },
    durableObjectsPersist: join(persist, "do"),
    d1Databases: { DB: "keybrake" },
    d1Persist: join(persist, "d1"),
    host: "127.0.0.1",
    port: 0,
    cf: false,
  };
}

export function migrationStatements() {
  const dir = join(ROOT, "migrations");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort()
    .flatMap((f) =>
      readFileSync(join(dir, f), "utf8")
        .split("\n")
        .filter((line) => !line.trim().startsWith("--"))
        .join("\n")
        .split(";")
        .map((s) => s.trim())
        .filter(Boolean),
    );
}

export async function startKeybrake({ vars = {}, twilio: twilioOptions = {} } = {}) {
  const stripe = await startStripeFake({ secret: STRIPE_SECRET });
  const twilio = await startTwilioFake({ accountSid: TWILIO_ACCOUNT_SID, authToken: TWILIO_AUTH_TOKEN, ...twilioOptions });
  const resend = await startResendFake({ apiKey: RESEND_API_KEY });
  const persist = mkdtempSync(join(tmpdir(), "keybrake-e2e-"));
  const logs = [];
  const mf = new Miniflare({
    ...workerOptions(persist),
    bindings: {
      KEYBRAKE_API_KEY: ADMIN_KEY,
      STRIPE_SECRET_KEY: STRIPE_SECRET,
      STRIPE_API_BASE: stripe.url,
      TWILIO_ACCOUNT_SID,
      TWILIO_AUTH_TOKEN,
      TWILIO_API_BASE: twilio.url,
      RESEND_API_KEY,
      RESEND_API_BASE: resend.url,
      UPSTREAM_TIMEOUT_MS: "2000",
      ALARM_BACKOFF_MS: "100",
      ...vars,
    },
    log: new CapturingLog(LogLevel.WARN, logs),
    // Each line workerd writes is kept (kb.logs, the capture) and printed only on request.
    handleRuntimeStdio(stdout, stderr) {
      const keep = (source, line) => {
        logs.push({ source, line });
        record({ kind: "log", source, line });
      };
      createInterface(stdout).on("line", (line) => {
        keep("workerd:stdout", line);
        if (PRINT_WORKER_LOGS) console.log(line);
      });
      createInterface(stderr).on("line", (line) => {
        keep("workerd:stderr", line);
        if (PRINT_WORKER_LOGS) console.error(line);
      });
    },
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  keybrakePorts.add(Number(new URL(url).port));
  record({ kind: "instance", url });
  const db = await mf.getD1Database("DB");
  for (const statement of migrationStatements()) await db.prepare(statement).run();

  async function call(method, path, { body, token = ADMIN_KEY, headers = {}, signal } = {}) {
    const res = await fetch(url + path, {
      method,
      signal,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    record({
      kind: "response",
      via: "call",
      method,
      path,
      status: res.status,
      statusText: res.statusText,
      headers: [...res.headers],
      body: text,
    });
    recordKeys(json);
    return { status: res.status, headers: res.headers, json, text };
  }

  return {
    url,
    port: Number(new URL(url).port),
    mf,
    db,
    stripe,
    twilio,
    resend,
    resetVendors() {
      stripe.reset();
      twilio.reset();
      resend.reset();
    },
    persistDir: persist,
    /** Every line Miniflare logged and workerd printed for this instance, as `{ source, line }`. */
    logs,
    call,
    /** `rawRequest` against this instance. */
    raw(bytes, options) {
      return rawRequest(this.port, bytes, options);
    },
    async key(state) {
      return (await call("GET", `/vault/keys/${state.key_id}`)).json;
    },
    /**
     * The key's state once every hold is closed and every audit row has reached D1. A call is
     * answered as soon as the vendor has answered; its settlement lands a moment later.
     */
    async settled(state, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = (await call("GET", `/vault/keys/${state.key_id}`)).json;
        if (s.reserved_usd === 0 && s.unresolved === 0 && s.audit_pending === 0) return s;
        if (Date.now() > deadline) throw new Error(`holds never closed: ${JSON.stringify(s)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async issueKey(overrides = {}) {
      const res = await call("POST", "/vault/keys", {
        body: {
          vendor: "stripe",
          daily_usd_cap: 300,
          allowed_endpoints: ["POST /v1/payment_intents"],
          expires_in: "2h",
          ...overrides,
        },
      });
      if (res.status !== 201) throw new Error(`issue failed: ${res.status} ${res.text}`);
      return res.json;
    },
    /** Polls the audit API until `predicate(page)` holds; audit rows reach D1 off the request path. */
    async auditUntil(query, predicate, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const res = await call("GET", `/vault/audit?${new URLSearchParams(query)}`);
        if (res.status === 200 && predicate(res.json)) return res.json;
        if (Date.now() > deadline) throw new Error(`audit never matched: ${res.status} ${res.text}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async close() {
      if (CAPTURING) await recordD1(db, url);
      await mf.dispose();
      await Promise.all([stripe.close(), twilio.close(), resend.close()]);
      if (CAPTURING) recordPersisted(persist, url);
      keybrakePorts.delete(Number(new URL(url).port));
      rmSync(persist, { recursive: true, force: true });
    },
  };
}

/** Polls `check` until it returns something truthy, and returns that. */
export async function until(what, check, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts one Keybrake for the test file that calls it, stops it afterwards, and resets the
 * vendor fakes before each test. The returned object is filled in once it has started.
 */
export function useKeybrake(options) {
  const kb = {};
  before(async () => Object.assign(kb, await startKeybrake(options)));
  after(async () => kb.close?.());
  beforeEach(() => kb.resetVendors());
  return kb;
}

/** A stripe-node client pointed at Keybrake with only host, port and protocol. */
export async function stripeClient(kb, vaultKey, options = {}) {
  const { default: Stripe } = await import("stripe");
  return new Stripe(vaultKey, { host: "127.0.0.1", port: kb.port, protocol: "http", telemetry: false, ...options });
}

/**
 * A twilio-node client that talks to Keybrake. twilio-node has no base-URL option; its
 * documented extension point is a custom `httpClient`, here one that sends every request to
 * Keybrake's `/twilio` route instead of api.twilio.com. The vault key is the auth token; the
 * account sid can be anything, since Keybrake pins the real one.
 */
export async function twilioClient(kb, vaultKey, accountSid = "ACanything") {
  const { default: twilio } = await import("twilio");
  const base = new twilio.RequestClient();
  const httpClient = {
    request(opts) {
      const uri = new URL(opts.uri);
      return base.request({ ...opts, uri: `${kb.url}/twilio${uri.pathname}${uri.search}` });
    },
  };
  return twilio(accountSid, vaultKey, { httpClient });
}

/** The resend SDK pointed at Keybrake through RESEND_BASE_URL, as its docs describe. */
export async function resendClient(kb, vaultKey) {
  const { Resend } = await import("resend");
  process.env.RESEND_BASE_URL = `${kb.url}/resend`;
  return new Resend(vaultKey);
}
