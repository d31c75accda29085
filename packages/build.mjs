// Builds the packages: `node packages/build.mjs [client|inngest]...` (default both).
// Each gets an ES module build (dist/esm) and a CommonJS build (dist/cjs), both with types,
// compiled by tsc from the same sources. The CommonJS build is compiled from a copy of the
// sources under a `"type": "commonjs"` package.json, which is how tsc's NodeNext mode is told
// to emit CommonJS. The only file that differs between the two is the peer loader.
import { cpSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync, lstatSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGES = dirname(fileURLToPath(import.meta.url));
const TSC = join(PACKAGES, "../node_modules/.bin/tsc");

function tsc(project) {
  try {
    execFileSync(TSC, ["-p", project], { stdio: "inherit" });
  } catch {
    console.error(`tsc failed for ${project}`);
    process.exit(1);
  }
}

function link(from, to) {
  mkdirSync(dirname(from), { recursive: true });
  try {
    if (lstatSync(from).isSymbolicLink()) return;
  } catch {}
  rmSync(from, { recursive: true, force: true });
  symlinkSync(to, from);
}

function build(name) {
  const dir = join(PACKAGES, name);
  const src = join(dir, "src");
  const dist = join(dir, "dist");
  rmSync(dist, { recursive: true, force: true });
  if (name === "client") execFileSync(process.execPath, [join(dir, "scripts/gen-types.mjs")], { stdio: "inherit" });
  if (name === "inngest") link(join(dir, "node_modules/keybrake"), "../../client");

  tsc(dir);

  const stage = join(dir, ".cjs-build");
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage);
  for (const f of readdirSync(src)) if (f.endsWith(".ts")) cpSync(join(src, f), join(stage, f));
  writeFileSync(join(stage, "package.json"), '{ "type": "commonjs" }\n');
  writeFileSync(
    join(stage, "tsconfig.json"),
    JSON.stringify({ extends: "../tsconfig.json", compilerOptions: { rootDir: ".", outDir: "../dist/cjs" }, include: ["*.ts"] }),
  );
  try {
    tsc(stage);
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
  writeFileSync(join(dist, "cjs/package.json"), '{ "type": "commonjs" }\n');

  for (const format of ["esm", "cjs"]) {
    for (const f of readdirSync(src).filter((f) => f.endsWith(`.${format}.js`))) {
      cpSync(join(src, f), join(dist, format, f.replace(`.${format}.js`, ".js")));
    }
    for (const f of readdirSync(src).filter((f) => f.endsWith(".d.ts"))) cpSync(join(src, f), join(dist, format, f));
  }
}

const names = process.argv.slice(2);
for (const name of names.length ? names : ["client", "inngest"]) build(name);
// The Inngest example imports the packages by name, as a user's project would.
const example = join(PACKAGES, "../examples/inngest/node_modules");
link(join(example, "keybrake"), "../../../packages/client");
link(join(example, "@keybrake/inngest"), "../../../../packages/inngest");
