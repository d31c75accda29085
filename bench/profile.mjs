// `make bench-profile`: where workerd's CPU goes in a guarded call, against the floor.
//
// Runs a build of Keybrake that keeps its function names (target/bench-profile/, the same code as
// build/, see the Makefile) and the floor, each in its own workerd with the V8 inspector on, and
// records a CPU profile (sampling every 50 µs) of each over the same sequential calls, as
// `make bench` makes them. Prints, per call: the process CPU (/proc) beside the isolate's own
// share (the profile), the isolate's time by kind of work (the innermost frame that names it)
// and the heaviest functions; writes the same to bench/profile.json. Timing only: it judges
// nothing, and it is not part of `make test`.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Log, LogLevel, Miniflare } from "miniflare";
import WebSocket from "ws";
import { migrationStatements, workerOptions } from "../tests/e2e/harness.mjs";
import { keepAliveAgent, sleep, timedRequest } from "./client.mjs";
import { round } from "./stats.mjs";
import { startVendorFake } from "./vendor-fake.mjs";

const ROOT = new URL("..", import.meta.url).pathname;
const ADMIN_KEY = "kb_admin_bench_6a1f0c3e9d2b4a8f7e5c";
const STRIPE_SECRET = "sk_test_keybrake_bench_51HfakeSecretValue";
const CALLS = Number(process.env.PROFILE_CALLS ?? 1000);
const WARMUP = 300;
const BODY = "amount=150&currency=usd";

// What a sample's time was spent on: the first rule, from the innermost frame outwards, whose
// pattern matches a frame's function name (or its script, for `url:` rules).
const KINDS = [
  ["GC", /^\(garbage collector\)$/],
  ["idle", /^\(idle\)$/],
  ["runtime outside JS and wasm (program)", /^\(program\)$/],
  ["SQLite (Durable Object storage: exec, its cursor)", /^(exec|next|toArray|one|raw|columnNames|rowsRead|rowsWritten|__wbg_exec\w*|__wbg_next\w*|__wbg_raw\w*|__wbg_toArray\w*)$|sql::SqlStorage|SqlCursor/],
  ["D1 (the outbox batch, from the alarm)", /D1Database|D1PreparedStatement|d1::|__wbg_batch|__wbg_bind|__wbg_prepare/],
  ["Durable Object stub fetch / alarm API", /durable::|Stub|__wbg_fetch_\w*|setAlarm|getAlarm|__wbg_setAlarm|__wbg_getAlarm/],
  ["fetch and Request/Response/Headers (worker crate + JS API)", /worker::(request|response|headers|fetch|request_init|body)|^(fetch|Request|Response|Headers|set|get|append|arrayBuffer|text|json|clone)$|__wbg_(new|set|get|headers|text|arrayBuffer|url|method|status)\w*/],
  ["JSON (serde_json, serde)", /serde_json|serde_core|serde::|_::<impl serde/],
  ["SHA-256", /sha2::/],
  ["allocator (dlmalloc, memcpy)", /dlmalloc|memcpy|memmove|memset|alloc::raw_vec|__rust_(alloc|dealloc|realloc)/],
  ["string and number formatting", /core::fmt|alloc::fmt|<f64 as core|itoa|ryu/],
  ["url parsing", /url::|idna::/],
  ["wasm-bindgen glue (JS <-> wasm conversions)", /^(passStringToWasm0|getStringFromWasm0|getArrayU8FromWasm0|passArray8ToWasm0|addHeapObject|takeObject|getObject|dropObject|handleError|debugString|__wbindgen\w*|__wbg_\w*|decode|encode|encodeInto|getUint8ArrayMemory0|getDataViewMemory0)$|wasm_bindgen::|js_sys::|web_sys::/],
  ["Keybrake's own code (ledger, proxy, objects)", /keybrake::/],
  ["other wasm (std, core, futures)", /^(core|alloc|std|futures_\w+|<)/],
];

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A minimal DevTools Protocol client over the inspector's WebSocket. */
async function inspector(port) {
  const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  let next = 1;
  const pending = new Map();
  ws.on("message", (data) => {
    const msg = JSON.parse(data);
    const p = pending.get(msg.id);
    if (!p) return;
    pending.delete(msg.id);
    if (msg.error) p.reject(new Error(JSON.stringify(msg.error)));
    else p.resolve(msg.result);
  });
  return {
    send: (method, params = {}) =>
      new Promise((resolve, reject) => {
        const id = next++;
        pending.set(id, { resolve, reject });
        ws.send(JSON.stringify({ id, method, params }));
      }),
    close: () => ws.close(),
  };
}

/** Self time by function and by kind of work, in µs, from a V8 CPU profile. */
function analyze(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfByFunction = new Map();
  const byKind = new Map();
  const kindCache = new Map();
  const kindOf = (id) => {
    if (kindCache.has(id)) return kindCache.get(id);
    let kind = "unattributed";
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const f = byId.get(at).callFrame;
      const hit = KINDS.find(([, re]) => re.test(f.functionName || "(anonymous)"));
      if (hit) {
        kind = hit[0];
        break;
      }
    }
    kindCache.set(id, kind);
    return kind;
  };
  const inclusive = new Map();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const fn = byId.get(at).callFrame.functionName;
      if (/keybrake::|worker::|^__wbg_|durable|VaultKey|fetch|alarm/.test(fn) && !seen.has(fn)) {
        seen.add(fn);
        inclusive.set(fn, (inclusive.get(fn) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
      }
    }
    const dt = profile.timeDeltas[i + 1] ?? 0; // the time until the next sample
    const f = byId.get(id).callFrame;
    const name = f.functionName || `(anonymous ${f.url.split("/").pop()}:${f.lineNumber})`;
    selfByFunction.set(name, (selfByFunction.get(name) ?? 0) + dt);
    const kind = kindOf(id);
    byKind.set(kind, (byKind.get(kind) ?? 0) + dt);
    total += dt;
  });
  return { total, selfByFunction, byKind, inclusive };
}

async function profileSide({ name, url, call, port, calls, burst }) {
  const agent = keepAliveAgent(burst ? calls : 1);
  for (let i = 0; i < WARMUP; i++) await call(agent, i);
  if (burst) await Promise.all(Array.from({ length: calls }, (_, i) => call(agent, i))); // open the connections
  const devtools = await inspector(port);
  await devtools.send("Profiler.enable");
  await devtools.send("Profiler.setSamplingInterval", { interval: 50 });
  await devtools.send("Profiler.start");
  const started = performance.now();
  let failed = 0;
  if (burst) {
    const answers = await Promise.all(Array.from({ length: calls }, (_, i) => call(agent, i)));
    failed = answers.filter((a) => a.status !== 200).length;
  } else {
    for (let i = 0; i < calls; i++) if ((await call(agent, i)).status !== 200) failed++;
  }
  await sleep(400); // the last audit rows leave the outbox 100 ms after their call
  const wallMs = performance.now() - started;
  const { profile } = await devtools.send("Profiler.stop");
  devtools.close();
  agent.destroy();
  const { total, selfByFunction, byKind, inclusive } = analyze(profile);
  const idle = byKind.get("idle") ?? 0;
  const perCall = (us) => round(us / 1000 / calls, 4);
  const busy = total - idle;
  return {
    name,
    url,
    calls,
    failed,
    wall_ms: round(wallMs),
    // The profile covers the isolate's thread from start to stop, waiting included: workerd
    // does not tell V8 when it is idle, so waiting shows as (program), with native work.
    profiled_ms_per_call: perCall(total),
    js_and_wasm_ms_per_call: perCall(busy - (byKind.get("runtime outside JS and wasm (program)") ?? 0)),
    by_kind_ms_per_call: Object.fromEntries(
      [...byKind].filter(([k]) => k !== "idle").sort((a, b) => b[1] - a[1]).map(([k, us]) => [k, perCall(us)]),
    ),
    inclusive_ms_per_call: Object.fromEntries(
      [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 40).map(([k, us]) => [k.length > 140 ? `${k.slice(0, 137)}...` : k, perCall(us)]),
    ),
    top_functions_ms_per_call: Object.fromEntries(
      [...selfByFunction]
        .filter(([k]) => k !== "(idle)")
        .sort((a, b) => b[1] - a[1])
        .slice(0, 25)
        .map(([k, us]) => [k.length > 140 ? `${k.slice(0, 137)}...` : k, perCall(us)]),
    ),
  };
}

async function main() {
  const fake = await startVendorFake();
  const persist = mkdtempSync(join(tmpdir(), "keybrake-profile-"));
  const guardPort = await freePort();
  const floorPort = await freePort();
  const base = workerOptions(persist);
  const guard = new Miniflare({
    ...base,
    name: "keybrake",
    scriptPath: join(ROOT, "target/bench-profile/index.js"),
    bindings: { KEYBRAKE_API_KEY: ADMIN_KEY, STRIPE_SECRET_KEY: STRIPE_SECRET, STRIPE_API_BASE: fake.url, UPSTREAM_TIMEOUT_MS: "10000" },
    inspectorPort: guardPort,
    unsafeInspectorProxy: true,
    log: new Log(LogLevel.WARN),
  });
  const floor = new Miniflare({
    name: "floor",
    modules: true,
    scriptPath: join(ROOT, "bench/floor/build/index.js"),
    modulesRules: base.modulesRules,
    compatibilityDate: base.compatibilityDate,
    bindings: { STRIPE_SECRET_KEY: STRIPE_SECRET, STRIPE_API_BASE: fake.url },
    host: "127.0.0.1",
    port: 0,
    cf: false,
    inspectorPort: floorPort,
    unsafeInspectorProxy: true,
    log: new Log(LogLevel.WARN),
  });
  try {
    const guardUrl = (await guard.ready).toString().replace(/\/$/, "");
    const floorUrl = (await floor.ready).toString().replace(/\/$/, "");
    const db = await guard.getD1Database("DB");
    for (const statement of migrationStatements()) await db.prepare(statement).run();
    const issue = async () => {
      const issued = await timedRequest(guardUrl, {
        method: "POST",
        path: "/vault/keys",
        headers: { authorization: `Bearer ${ADMIN_KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ vendor: "stripe", daily_usd_cap: 1_000_000, allowed_endpoints: ["POST /v1/payment_intents"], expires_in: "2h" }),
      });
      if (issued.status !== 201) throw new Error(`issuing a key answered ${issued.status}`);
      return JSON.parse(issued.body).vault_key;
    };
    const vaultKey = await issue();
    const manyKeys = [];
    for (let i = 0; i < 100; i++) manyKeys.push(await issue());
    const headers = (token) => ({ authorization: `Bearer ${token}`, "content-type": "application/x-www-form-urlencoded" });
    // A network error counts as a failed call (status 0), never ends the run.
    const post = (baseUrl, tokenOf) => (agent, i) =>
      timedRequest(baseUrl, { agent, method: "POST", path: "/v1/payment_intents", headers: headers(tokenOf(i)), body: BODY }).catch(
        (e) => ({ status: 0, error: e.message }),
      );

    const sides = [];
    const floorCall = post(floorUrl, () => "sk_test_direct");
    const guardCall = post(guardUrl, () => vaultKey);
    const common = { calls: CALLS };
    sides.push(await profileSide({ ...common, name: "floor, one call at a time", url: floorUrl, call: floorCall, port: floorPort }));
    sides.push(await profileSide({ ...common, name: "guard, one call at a time", url: guardUrl, call: guardCall, port: guardPort }));
    sides.push(await profileSide({ ...common, name: "floor, burst", url: floorUrl, call: floorCall, port: floorPort, burst: true }));
    sides.push(await profileSide({ ...common, name: "guard, burst on one key", url: guardUrl, call: guardCall, port: guardPort, burst: true }));
    const spread = post(guardUrl, (i) => manyKeys[i % manyKeys.length]);
    sides.push(await profileSide({ ...common, name: "guard, burst over 100 keys", url: guardUrl, call: spread, port: guardPort, burst: true }));

    const out = { date: new Date().toISOString(), calls: CALLS, sampling_interval_us: 50, sides };
    writeFileSync(join(ROOT, "bench/profile.json"), `${JSON.stringify(out, null, 2)}\n`);
    for (const s of sides) {
      console.log(`\n${s.name}: ${s.calls} sequential calls (${s.failed} failed), ${s.wall_ms} ms`);
      console.log(`  profiled ms per call: ${s.profiled_ms_per_call}; in JS and wasm: ${s.js_and_wasm_ms_per_call}`);
      console.log("  by kind of work, ms per call:");
      for (const [k, v] of Object.entries(s.by_kind_ms_per_call)) console.log(`    ${v.toFixed(4).padStart(8)}  ${k}`);
      console.log("  heaviest functions (self), ms per call:");
      for (const [k, v] of Object.entries(s.top_functions_ms_per_call)) console.log(`    ${v.toFixed(4).padStart(8)}  ${k}`);
    }
  } finally {
    await guard.dispose().catch(() => {});
    await floor.dispose().catch(() => {});
    await fake.stop();
    rmSync(persist, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
