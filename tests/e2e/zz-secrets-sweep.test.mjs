// The secrets sweep. It runs after every other end-to-end test file (node runs a directory's
// test files in name order, one at a time with --test-concurrency=1) and scans everything they
// captured: every answer Keybrake gave, whatever the client (call(), raw sockets, the stripe,
// twilio and resend SDKs), every D1 row, the strings of every file Durable Objects and D1
// persisted, and every line Miniflare and workerd logged. No vendor secret, no admin key and no
// vault key may appear anywhere in it, except a vault key in the `vault_key` field of the one
// answer that issued it. See "Capture" in harness.mjs for what is recorded and how a run's
// captures are kept apart from other runs'.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, rmSync, mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, basename, dirname } from "node:path";
import { gunzipSync, inflateSync, brotliDecompressSync, gzipSync } from "node:zlib";
import {
  ADMIN_KEY,
  STRIPE_SECRET,
  TWILIO_ACCOUNT_SID,
  TWILIO_AUTH_TOKEN,
  TWILIO_API_KEY_SID,
  TWILIO_API_KEY_SECRET,
  RESEND_API_KEY,
  VENDOR_SECRETS,
  CAPTURE_DIR,
  VAULT_KEY_PATTERN,
  captureRunId,
  captureRunDir,
  openCapture,
} from "./harness.mjs";

const HERE = dirname(new URL(import.meta.url).pathname);
const SELF = basename(new URL(import.meta.url).pathname);

/** The fixed secrets: each vendor secret, the Twilio credential as it is sent upstream, the admin key. */
export function fixedSecrets() {
  const named = {
    STRIPE_SECRET_KEY: STRIPE_SECRET,
    TWILIO_AUTH_TOKEN,
    RESEND_API_KEY,
    "Twilio Basic credential": Buffer.from(`${TWILIO_ACCOUNT_SID}:${TWILIO_AUTH_TOKEN}`).toString("base64"),
    TWILIO_API_KEY_SECRET,
    "Twilio API key Basic credential": Buffer.from(`${TWILIO_API_KEY_SID}:${TWILIO_API_KEY_SECRET}`).toString("base64"),
    KEYBRAKE_API_KEY: ADMIN_KEY,
  };
  for (const secret of VENDOR_SECRETS) assert.ok(Object.values(named).includes(secret), "every vendor secret is swept");
  return Object.entries(named).map(([label, value]) => ({ label, value }));
}

/** Reads every capture file of a run directory, skipping the given pids (this process). */
export function loadCaptures(runDir, { skipPids = [] } = {}) {
  let names = [];
  try {
    names = readdirSync(runDir).filter((n) => n.endsWith(".jsonl"));
  } catch {
    return [];
  }
  const files = [];
  for (const name of names.sort()) {
    const records = [];
    for (const line of readFileSync(join(runDir, name), "utf8").split("\n")) {
      if (!line) continue;
      try {
        records.push(JSON.parse(line));
      } catch {
        records.push({ kind: "unreadable", line }); // a line cut off by a crash: still scanned
      }
    }
    const start = records.find((r) => r.kind === "start");
    if (start && skipPids.includes(start.pid)) continue;
    files.push({ name, pid: start?.pid ?? null, ended: records.some((r) => r.kind === "end"), records });
  }
  return files;
}

/** Splits a captured byte stream into the HTTP/1.1 answers in it. Whatever does not parse stays raw. */
export function splitResponses(bytes) {
  const answers = [];
  let at = 0;
  while (at < bytes.length) {
    const headEnd = bytes.indexOf("\r\n\r\n", at);
    if (headEnd < 0 || !bytes.toString("latin1", at, at + 5).startsWith("HTTP/")) break;
    const head = bytes.toString("latin1", at, headEnd);
    const [statusLine, ...lines] = head.split("\r\n");
    const headers = {};
    for (const line of lines) {
      const i = line.indexOf(":");
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const status = Number(statusLine.split(" ")[1]);
    let body;
    let next;
    const bodyStart = headEnd + 4;
    if ((status >= 100 && status < 200) || status === 204 || status === 304) {
      body = Buffer.alloc(0);
      next = bodyStart;
    } else if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      const parts = [];
      let p = bodyStart;
      for (;;) {
        const lineEnd = bytes.indexOf("\r\n", p);
        if (lineEnd < 0) {
          p = bytes.length;
          break;
        }
        const size = parseInt(bytes.toString("latin1", p, lineEnd).split(";")[0], 16);
        if (!Number.isFinite(size)) {
          p = bytes.length;
          break;
        }
        if (size === 0) {
          const trailerEnd = bytes.indexOf("\r\n\r\n", lineEnd);
          p = trailerEnd < 0 ? bytes.length : trailerEnd + 4;
          break;
        }
        parts.push(bytes.subarray(lineEnd + 2, lineEnd + 2 + size));
        p = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(parts);
      next = p;
    } else if (headers["content-length"] !== undefined) {
      next = Math.min(bytes.length, bodyStart + Number(headers["content-length"]));
      body = bytes.subarray(bodyStart, next);
    } else {
      body = bytes.subarray(bodyStart);
      next = bytes.length;
    }
    answers.push({ statusLine, status, head, headers, body: decodeBody(body, headers["content-encoding"]) });
    at = next;
  }
  return { answers, rest: bytes.subarray(at) };
}

function decodeBody(body, encoding = "") {
  const steps = encoding
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s && s !== "identity")
    .reverse();
  let out = body;
  try {
    for (const step of steps) {
      out = step === "gzip" || step === "x-gzip" ? gunzipSync(out) : step === "deflate" ? inflateSync(out) : step === "br" ? brotliDecompressSync(out) : out;
    }
  } catch {
    return body.toString("latin1"); // undecodable: scan the bytes as they came
  }
  return out.toString("latin1");
}

/**
 * The answer that issued a vault key: 201, a JSON body whose `vault_key` is that key and whose
 * `key_id` is the key's id (or whose `issuer_token` is the token of its `issuer_id`). That one
 * field of that one answer may hold the key.
 */
function issuedKey(status, body) {
  if (status !== 201) return null;
  let json;
  try {
    json = JSON.parse(body);
  } catch {
    return null;
  }
  const [field, id] = typeof json?.issuer_token === "string" ? ["issuer_token", "issuer_id"] : ["vault_key", "key_id"];
  const key = json?.[field];
  if (typeof key !== "string" || typeof json[id] !== "string" || !key.includes(`_${json[id]}_`)) return null;
  return key;
}

/**
 * The answer that created a webhook: 201, a JSON body with a `wh_` id and its `whsec_` secret.
 * That one field of that one answer may hold the secret; D1's `webhooks` table keeps it to sign.
 */
function issuedWebhookSecret(status, body) {
  if (status !== 201) return null;
  let json;
  try {
    json = JSON.parse(body);
  } catch {
    return null;
  }
  const secret = json?.secret;
  return typeof secret === "string" && secret.startsWith("whsec_") && /^wh_/.test(json.id ?? "") ? secret : null;
}

/** Takes one issuing answer's own secret out of its text, noting the secret. */
function withoutIssuedSecrets(status, body, webhookSecrets) {
  const secret = issuedWebhookSecret(status, body);
  if (!secret) return body;
  webhookSecrets.add(secret);
  return body.replace(`"secret":"${secret}"`, '"secret":"<issued>"');
}

/** Removes the `"vault_key":"<key>"` (or `issuer_token`) member from an issuing answer's text, once. */
function withoutIssuedKey(text, key) {
  const field = key.startsWith("kbi_") ? "issuer_token" : "vault_key";
  const member = new RegExp(`"${field}"\\s*:\\s*"${key.replace(/[-_]/g, "\\$&")}"`);
  return text.replace(member, `"${field}":"<issued>"`);
}

/**
 * Every piece of captured text the sweep reads, as `{ where, text }`, with the issuing answers'
 * own `vault_key` member taken out. Also returns every vault key issued or seen.
 */
export function surfaces(files) {
  const out = [];
  const keys = new Set();
  const webhookSecrets = new Set();
  const issued = new Map(); // key -> [where] of answers that issued it, per capture source
  const coverage = { files: files.length, responses: 0, streams: 0, streamAnswers: 0, keys: 0, logLines: 0, d1Rows: 0, stateFiles: 0 };
  const noteIssued = (key, where, source) => {
    const list = issued.get(`${source} ${key}`) ?? [];
    list.push(where);
    issued.set(`${source} ${key}`, list);
  };
  /** Adds the answers in raw HTTP bytes, and any bytes that do not parse; returns how many answers. */
  const wire = (bytes, label, source) => {
    const { answers, rest } = splitResponses(bytes);
    answers.forEach((a, i) => {
      const where = `${label} answer ${i + 1}: ${a.statusLine})`;
      let body = withoutIssuedSecrets(a.status, a.body, webhookSecrets);
      const key = issuedKey(a.status, body);
      if (key) {
        noteIssued(key, where, source);
        body = withoutIssuedKey(body, key);
      }
      out.push({ where: `${where} status line and headers`, text: a.head });
      out.push({ where: `${where} body`, text: body });
    });
    if (rest.length) out.push({ where: `${label} unparsed bytes)`, text: rest.toString("latin1") });
    return answers.length;
  };
  for (const file of files) {
    file.records.forEach((r, index) => {
      const where = `${file.name}#${index + 1} ${r.kind}`;
      switch (r.kind) {
        case "key":
          coverage.keys++;
          keys.add(r.vault_key);
          break;
        case "response":
          coverage.responses++;
          if (r.via === "raw") {
            // The answer's bytes as they came off the socket: split like a stream.
            wire(Buffer.from(r.body ?? "", "latin1"), `${where} (raw →`, "raw");
          } else {
            const label = `${where} (${r.via} ${r.method} ${r.path} → ${r.status})`;
            const headers = (r.headers ?? []).map(([n, v]) => `${n}: ${v}`).join("\n");
            let body = withoutIssuedSecrets(r.status, r.body ?? "", webhookSecrets);
            const key = issuedKey(r.status, body);
            if (key) {
              noteIssued(key, label, r.via);
              body = withoutIssuedKey(body, key);
            }
            out.push({ where: `${label} status line and headers`, text: `${r.status} ${r.statusText ?? ""}\n${headers}` });
            out.push({ where: `${label} body`, text: body });
          }
          break;
        case "stream":
          coverage.streams++;
          coverage.streamAnswers += wire(Buffer.from(r.bytes, "base64"), `${where} (port ${r.port},`, "stream");
          break;
        case "log":
          coverage.logLines++;
          out.push({ where: `${where} (${r.source})`, text: r.line });
          break;
        case "d1":
          (r.rows ?? []).forEach((row, i) => {
            coverage.d1Rows++;
            out.push({ where: `${where} (D1 ${r.table} row ${i + 1})`, text: JSON.stringify(row) });
          });
          break;
        case "state":
          coverage.stateFiles++;
          out.push({ where: `${where} (${r.file})`, text: (r.strings ?? []).join("\n") });
          break;
        case "unreadable":
          out.push({ where, text: r.line });
          break;
        default:
          break; // start, end, instance
      }
    });
  }
  // Keys are also taken from anything that looks like one, so a key issued outside call()
  // (its answer still seen on the wire) is swept too.
  for (const { text } of out) for (const m of text.matchAll(VAULT_KEY_PATTERN)) keys.add(m[0]);
  for (const [sourceKey, list] of issued) {
    const [, key] = sourceKey.split(" ");
    keys.add(key);
  }
  return { surfaces: out, keys, issued, coverage, webhookSecrets };
}

/** Masks a secret for a report: enough to tell which one it is, never the secret itself. */
function mask(value) {
  return `${value.slice(0, 10)}…(${value.length} chars)`;
}

/** Scans captures for secrets. Returns the findings (where, what) and what was covered. */
export function sweep(files, fixed = fixedSecrets()) {
  const { surfaces: texts, keys, issued, coverage, webhookSecrets } = surfaces(files);
  const needles = [...fixed];
  // A webhook's secret signs deliveries, so D1's `webhooks` table (and the file it lives in)
  // holds it; anywhere else it is a leak. The harness's own read of that table (`d1` records)
  // also crosses a tapped connection, where the row shows as `…events]","<secret>",<created>`,
  // or, when the encoding refers to a repeated value (the same events list) by its index,
  // `…url","<secret>",<created>`: a string member of the row followed by its creation time.
  for (const secret of webhookSecrets) {
    const asStored = new RegExp(`","${secret.replace(/[-_]/g, "\\$&")}",\\d`, "g");
    needles.push({ label: `webhook secret ${mask(secret)}`, value: secret, storedIn: /\(D1 webhooks row |\(d1\//, asStored });
  }
  for (const key of keys) {
    const id = key.split("_")[2];
    needles.push({ label: `vault key ${id.slice(0, 12)}… (full token)`, value: key });
    needles.push({ label: `vault key ${id.slice(0, 12)}… (secret part)`, value: key.slice(-43), partOf: key });
  }
  const findings = [];
  for (const { where, text } of texts) {
    if (!text) continue;
    for (const needle of needles) {
      if (!text.includes(needle.value)) continue;
      if (needle.asStored && !text.replace(needle.asStored, "").includes(needle.value)) continue;
      if (needle.partOf && text.includes(needle.partOf)) continue; // reported as the full token
      if (needle.storedIn && needle.storedIn.test(where)) continue;
      const i = text.indexOf(needle.value);
      const context = `${text.slice(Math.max(0, i - 40), i)}<${needle.label}>${text.slice(i + needle.value.length, i + needle.value.length + 40)}`;
      findings.push({ what: needle.label, where, context: context.replace(/\s+/g, " ") });
    }
  }
  for (const [sourceKey, list] of issued) {
    if (list.length > 1) {
      const [source, key] = sourceKey.split(" ");
      findings.push({ what: `vault key ${mask(key)} shown by ${list.length} answers (${source})`, where: list.join("; "), context: "" });
    }
  }
  coverage.vaultKeys = keys.size;
  coverage.webhookSecrets = webhookSecrets.size;
  return { findings, coverage };
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}

/** Removes the capture directories of runs whose runner has exited. */
function removeFinishedRuns(except) {
  let names = [];
  try {
    names = readdirSync(CAPTURE_DIR);
  } catch {
    return;
  }
  for (const name of names) {
    const dir = join(CAPTURE_DIR, name);
    if (dir === except || !name.startsWith("run-")) continue;
    const runner = Number(name.slice(4).split("-")[0]);
    if (Number.isInteger(runner) && runner > 0 && alive(runner) && Date.now() - statSync(dir).mtimeMs < 24 * 3600_000) continue;
    rmSync(dir, { recursive: true, force: true });
  }
}

const report = (findings) =>
  findings
    .slice(0, 40)
    .map((f) => `- ${f.what}\n    in ${f.where}${f.context ? `\n    ${f.context}` : ""}`)
    .join("\n") + (findings.length > 40 ? `\n… and ${findings.length - 40} more` : "");

test("the sweep flags a planted secret wherever it is captured, and allows only the issuing answer", () => {
  const dir = mkdtempSync(join(tmpdir(), "keybrake-sweep-selfcheck-"));
  try {
    const keyId = "0123456789abcdef".repeat(4);
    const otherId = "fedcba9876543210".repeat(4);
    const key = `kb_stripe_${keyId}_${"S".repeat(42)}A`;
    const other = `kb_resend_${otherId}_${"R".repeat(42)}B`;
    const issue = (k, id) => JSON.stringify({ key_id: id, vault_key: k, vendor: "stripe", daily_usd_cap: 5 });
    const http = (status, headers, body) =>
      Buffer.concat([
        Buffer.from(`HTTP/1.1 ${status} X\r\n${Object.entries({ ...headers, "content-length": body.length }).map(([n, v]) => `${n}: ${v}`).join("\r\n")}\r\n\r\n`),
        body,
      ]);
    const cap = openCapture(join(dir, "planted.test.mjs-1.jsonl"));
    cap.write({ kind: "start", pid: 1, ppid: 0, script: "planted.test.mjs" });
    cap.write({ kind: "key", key_id: keyId, vault_key: key });
    // Allowed: the issuing answer, through call() and on the wire.
    cap.write({ kind: "response", via: "call", method: "POST", path: "/vault/keys", status: 201, statusText: "Created", headers: [], body: issue(key, keyId) });
    // Planted, one per capture source:
    cap.write({ kind: "response", via: "call", method: "GET", path: "/x", status: 200, statusText: "OK", headers: [["x-debug", `auth=Bearer ${STRIPE_SECRET}`]], body: "{}" });
    cap.write({ kind: "response", via: "raw", status: 400, statusText: "Bad Request", headers: [], body: `HTTP/1.1 400 Bad Request\r\n\r\nyou sent ${key}` });
    const wire = Buffer.concat([
      http(201, { "content-type": "application/json" }, Buffer.from(issue(other, otherId))),
      http(200, { "content-encoding": "gzip" }, gzipSync(Buffer.from(`{"echo":"${RESEND_API_KEY}"}`))),
      Buffer.from(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{"k":\r\n${(other.length + 2).toString(16)}\r\n"${other}"\r\n1\r\n}\r\n0\r\n\r\n`),
    ]);
    cap.write({ kind: "stream", port: 1, bytes: wire.toString("base64") });
    cap.write({ kind: "log", source: "workerd:stderr", line: `upstream failed, authorization Basic ${Buffer.from(`${TWILIO_ACCOUNT_SID}:${TWILIO_AUTH_TOKEN}`).toString("base64")}` });
    cap.write({ kind: "d1", table: "audit", rows: [{ id: "r1", idempotency_key: key.slice(-43) }] });
    cap.write({ kind: "state", file: "do/x.sqlite", strings: [`config ${ADMIN_KEY} end`] });
    cap.write({ kind: "log", source: "miniflare", line: `again ${TWILIO_AUTH_TOKEN}` });
    cap.close();

    const files = loadCaptures(dir);
    const { findings } = sweep(files);
    const got = findings.map((f) => `${f.what} @ ${f.where.split(" ")[0].split("#")[1]}`).sort();
    assert.deepEqual(
      got,
      [
        "KEYBRAKE_API_KEY @ 9",
        "RESEND_API_KEY @ 6",
        "STRIPE_SECRET_KEY @ 4",
        "TWILIO_AUTH_TOKEN @ 10",
        "Twilio Basic credential @ 7",
        `vault key ${keyId.slice(0, 12)}… (full token) @ 5`,
        `vault key ${keyId.slice(0, 12)}… (secret part) @ 8`,
        `vault key ${otherId.slice(0, 12)}… (full token) @ 6`,
      ].sort(),
      report(findings),
    );

    // The same run without the plants is clean: the issuing answers alone are not findings.
    const clean = join(dir, "clean");
    const cleanCap = openCapture(join(clean, "clean.test.mjs-2.jsonl"));
    cleanCap.write({ kind: "start", pid: 2, ppid: 0, script: "clean.test.mjs" });
    cleanCap.write({ kind: "response", via: "call", method: "POST", path: "/vault/keys", status: 201, statusText: "Created", headers: [], body: issue(key, keyId) });
    cleanCap.write({ kind: "stream", port: 1, bytes: http(201, {}, Buffer.from(issue(key, keyId))).toString("base64") });
    cleanCap.close();
    assert.deepEqual(sweep(loadCaptures(clean)).findings, []);

    // A key shown by a second answer is a finding even where the answer looks like an issue.
    const twice = join(dir, "twice");
    const twiceCap = openCapture(join(twice, "twice.test.mjs-3.jsonl"));
    for (let i = 0; i < 2; i++) {
      twiceCap.write({ kind: "response", via: "call", method: "POST", path: "/vault/keys", status: 201, statusText: "Created", headers: [], body: issue(key, keyId) });
    }
    twiceCap.close();
    assert.equal(sweep(loadCaptures(twice)).findings.length, 1);

    // A webhook's secret: allowed in its creating answer and where D1 keeps it, nowhere else.
    const hooks = join(dir, "hooks");
    const secret = `whsec_${"W".repeat(43)}`;
    const hookCap = openCapture(join(hooks, "hooks.test.mjs-4.jsonl"));
    const created = JSON.stringify({ id: "wh_0123456789abcdef", url: "https://x.example/h", events: ["*"], secret });
    hookCap.write({ kind: "response", via: "call", method: "POST", path: "/vault/webhooks", status: 201, statusText: "Created", headers: [], body: created });
    hookCap.write({ kind: "stream", port: 1, bytes: http(201, {}, Buffer.from(created)).toString("base64") });
    hookCap.write({ kind: "d1", table: "webhooks", rows: [{ id: "wh_0123456789abcdef", secret }] });
    hookCap.write({ kind: "state", file: "d1/db.sqlite", strings: [secret] });
    hookCap.write({ kind: "response", via: "call", method: "GET", path: "/vault/webhooks", status: 200, statusText: "OK", headers: [], body: `{"secret":"${secret}"}` });
    hookCap.write({ kind: "log", source: "workerd:stdout", line: `signing with ${secret}` });
    // The harness's read of the table, as it crosses the tapped connection: allowed.
    hookCap.write({ kind: "stream", port: 1, bytes: http(200, {}, Buffer.from(`["wh_1","https://x","[\\"*\\"]","${secret}",1796549001042,null]`)).toString("base64") });
    // ... and a row whose events list is a reference to an earlier, equal one.
    hookCap.write({ kind: "stream", port: 1, bytes: http(200, {}, Buffer.from(`["wh_2","root","https://y","${secret}",1796549001043,null]`)).toString("base64") });
    hookCap.close();
    const leaks = sweep(loadCaptures(hooks)).findings.map((f) => f.where.split(" ")[0].split("#")[1]).sort();
    assert.deepEqual(leaks, ["5", "6"], report(sweep(loadCaptures(hooks)).findings));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

let passed = false;
const runDir = captureRunDir();

test("no secret or vault key appears in any answer, D1 row, stored state or log line of the suite", () => {
  const laterFiles = readdirSync(HERE).filter((n) => /\.test\.[cm]?[jt]s$/.test(n) && n > SELF);
  assert.deepEqual(laterFiles, [], `${SELF} must sort after every other test file so that it runs last`);

  const files = loadCaptures(runDir, { skipPids: [process.pid] });
  assert.ok(
    files.length > 0,
    `no captures for this run (${runDir}): run the whole suite, node --test --test-concurrency=1 tests/e2e/`,
  );
  const running = files.filter((f) => !f.ended && f.pid !== null && alive(f.pid));
  assert.deepEqual(
    running.map((f) => f.name),
    [],
    "test files still running while the sweep ran: run with --test-concurrency=1",
  );
  for (const f of files.filter((f) => !f.ended)) console.log(`# ${f.name} ended without closing its capture (crashed?); scanned as is`);
  const uncaptured = readdirSync(HERE).filter(
    (n) => /\.test\.[cm]?[jt]s$/.test(n) && n !== SELF && !files.some((f) => f.name.startsWith(`${n}-`)),
  );
  if (uncaptured.length) console.log(`# no capture from ${uncaptured.join(", ")} in this run (not run, or started no Keybrake)`);

  const { findings, coverage } = sweep(files);
  console.log(`# swept run ${captureRunId()}: ${files.map((f) => f.name.replace(/-\d+\.jsonl$/, "")).join(", ")}`);
  console.log(
    `# ${coverage.responses} call()/raw answers, ${coverage.streamAnswers} answers in ${coverage.streams} client connections ` +
      `(SDKs included), ${coverage.d1Rows} D1 rows, ${coverage.stateFiles} persisted files, ${coverage.logLines} log lines; ` +
      `${coverage.vaultKeys} vault keys, ${coverage.webhookSecrets} webhook secrets and ${fixedSecrets().length} fixed secrets looked for`,
  );
  assert.ok(coverage.responses > 0 && coverage.streamAnswers > 0 && coverage.vaultKeys > 0, `nothing to sweep: ${JSON.stringify(coverage)}`);
  assert.equal(findings.length, 0, `secrets found (captures kept in ${runDir}):\n${report(findings)}`);
  passed = true;
});

after(() => {
  if (passed) rmSync(runDir, { recursive: true, force: true });
  removeFinishedRuns(runDir);
});
