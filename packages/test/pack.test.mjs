// What would be published works: `npm pack` both packages, install the tarballs into a fresh
// project outside the repository (with the peers, at the versions the repository pins, from
// npm's cache when it has them), type-check a user's file against them, and run a small
// script, as ES module and as CommonJS, against the built Worker.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startKeybrake, ADMIN_KEY } from "../../tests/e2e/harness.mjs";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const pins = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).devDependencies;
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], ...opts });
// The vendor fakes live in this process: a script that calls through the Worker must not
// block its event loop.
const runAsync = async (cmd, args, opts) => (await promisify(execFile)(cmd, args, { encoding: "utf8", ...opts })).stdout;
const npm = (args, cwd) => run("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd });

let kb;
let project;
const tarballs = {};

before(async () => {
  project = mkdtempSync(join(tmpdir(), "keybrake-pack-"));
  for (const [name, dir] of [["keybrake", "client"], ["@keybrake/inngest", "inngest"]]) {
    const [packed] = JSON.parse(npm(["pack", "--json", "--pack-destination", project], join(ROOT, "packages", dir)));
    tarballs[name] = packed;
  }
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "pack-smoke", private: true, type: "module" }));
  // Exact pins, and --prefer-offline: `make tools` (npm ci) has put these in npm's cache.
  npm(
    [
      "install",
      "--prefer-offline",
      "--ignore-scripts",
      join(project, tarballs["keybrake"].filename),
      join(project, tarballs["@keybrake/inngest"].filename),
      ...["inngest", "@inngest/test", "stripe", "typescript", "@types/node"].map((p) => `${p}@${pins[p]}`),
    ],
    project,
  );
  kb = await startKeybrake();
});
after(async () => {
  await kb?.close();
  if (project) rmSync(project, { recursive: true, force: true });
});

test("the tarballs hold both builds with their types, and no sources or tests", () => {
  for (const [name, packed] of Object.entries(tarballs)) {
    const files = packed.files.map((f) => f.path);
    for (const f of ["dist/esm/index.js", "dist/esm/index.d.ts", "dist/cjs/index.js", "dist/cjs/index.d.ts", "dist/cjs/package.json", "package.json"]) {
      assert.ok(files.includes(f), `${name} has ${f}`);
    }
    assert.deepEqual(files.filter((f) => !f.startsWith("dist/") && f !== "package.json" && f !== "README.md"), [], `${name} ships only dist`);
  }
  assert.ok(tarballs.keybrake.files.some((f) => f.path === "dist/esm/load-peer.js"));
});

test("a user's TypeScript, ES module and CommonJS, type-checks against the installed packages", () => {
  writeFileSync(
    join(project, "check.ts"),
    `import { Inngest } from "inngest";
import { Keybrake, isCapHit, type KeyState } from "keybrake";
import { keybrakeMiddleware } from "@keybrake/inngest";
const kb = new Keybrake({ baseUrl: "http://127.0.0.1:8787", token: "t".repeat(32) });
export async function spent(id: string): Promise<number> {
  const state: KeyState = await kb.keys.get(id);
  return state.spent_usd;
}
// @ts-expect-error a misspelt limit is refused by the types, as by Keybrake
void kb.keys.issue({ vendor: "stripe", daily_cap_usd: 1, allowed_endpoints: ["POST /v1/payment_intents"] });
const inngest = new Inngest({
  id: "check",
  middleware: [keybrakeMiddleware({ keybrake: kb, key: () => ({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] }) })],
});
export const fn = inngest.createFunction({ id: "f", triggers: [{ event: "e" }] }, async ({ keybrake }) => {
  const intent = await keybrake.stripe.paymentIntents.create({ amount: 100, currency: "usd" });
  return { id: intent.id, capHit: isCapHit(null), key: keybrake.key.key_id };
});
`,
  );
  // And from CommonJS, which reads the dist/cjs declarations.
  writeFileSync(
    join(project, "check-cjs.cts"),
    `import kb = require("keybrake");
import mw = require("@keybrake/inngest");
const client = new kb.Keybrake({ baseUrl: "http://127.0.0.1:8787" });
export const capHit: boolean = kb.isCapHit(null) || kb.isRetryable(client);
export const middleware: typeof mw.keybrakeMiddleware = mw.keybrakeMiddleware;
`,
  );
  const tsc = join(project, "node_modules/.bin/tsc");
  const args = ["--noEmit", "--strict", "--skipLibCheck", "--target", "es2022", "--module", "nodenext", "--types", "node", "check.ts", "check-cjs.cts"];
  try {
    run(tsc, args, { cwd: project });
  } catch (err) {
    assert.fail(`tsc: ${err.stdout}${err.stderr}`);
  }
});

test("the installed packages work against Keybrake, as ES module and as CommonJS", async () => {
  writeFileSync(
    join(project, "smoke.mjs"),
    `import { Keybrake, isCapHit } from "keybrake";
import { keybrakeMiddleware } from "@keybrake/inngest";
import { Inngest } from "inngest";
import { InngestTestEngine } from "@inngest/test";

const kb = new Keybrake({ baseUrl: process.env.KEYBRAKE_URL, token: process.env.KEYBRAKE_API_KEY });
const key = await kb.keys.issue({ vendor: "stripe", daily_usd_cap: 3, allowed_endpoints: ["POST /v1/payment_intents"] });
const stripe = kb.stripeFor(key);
const first = await stripe.paymentIntents.create({ amount: 200, currency: "usd" });
const capped = await stripe.paymentIntents.create({ amount: 200, currency: "usd" }).catch((e) => e);

const inngest = new Inngest({
  id: "smoke",
  middleware: [keybrakeMiddleware({ keybrake: kb, key: () => ({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] }) })],
});
const fn = inngest.createFunction({ id: "charge", triggers: [{ event: "e" }] }, async ({ step, keybrake }) => {
  const id = await step.run("charge", async () => (await keybrake.stripe.paymentIntents.create({ amount: 50, currency: "usd" })).id);
  return { id, keyId: keybrake.key.key_id };
});
const { result, error } = await new InngestTestEngine({ function: fn, events: [{ name: "e", data: {} }] }).execute();
const runKey = await kb.keys.get(result.keyId);
console.log(JSON.stringify({ first: first.id, capHit: isCapHit(capped), run: result.id, error: error ?? null, runKey: runKey.status, spent: runKey.spent_usd }));
`,
  );
  writeFileSync(
    join(project, "smoke.cjs"),
    `const { Keybrake, isCapHit, isRetryable } = require("keybrake");
const { keybrakeMiddleware } = require("@keybrake/inngest");
(async () => {
  const kb = new Keybrake({ baseUrl: process.env.KEYBRAKE_URL, token: process.env.KEYBRAKE_API_KEY });
  const key = await kb.keys.issue({ vendor: "stripe", daily_usd_cap: 1, allowed_endpoints: ["POST /v1/payment_intents"] });
  const capped = await kb.stripeFor(key).paymentIntents.create({ amount: 500, currency: "usd" }).catch((e) => e);
  console.log(JSON.stringify({ capHit: isCapHit(capped), retryable: isRetryable(capped), middleware: typeof keybrakeMiddleware }));
})();
`,
  );
  const env = { ...process.env, KEYBRAKE_URL: kb.url, KEYBRAKE_API_KEY: ADMIN_KEY };
  const esm = JSON.parse(await runAsync(process.execPath, ["smoke.mjs"], { cwd: project, env }));
  assert.match(esm.first, /^pi_/);
  assert.equal(esm.capHit, true);
  assert.match(esm.run, /^pi_/);
  assert.equal(esm.error, null);
  assert.equal(esm.runKey, "revoked", "the middleware revoked the run's key");
  assert.equal(esm.spent, 0.5);
  const cjs = JSON.parse(await runAsync(process.execPath, ["smoke.cjs"], { cwd: project, env }));
  assert.deepEqual(cjs, { capHit: true, retryable: false, middleware: "function" });
});
