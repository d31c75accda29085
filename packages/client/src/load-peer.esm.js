// The ES module build's loader: Node's require, made for this file's location, so the peer is
// found where the package is installed. Looked up lazily, so that the admin client still
// loads where there is no `node:module` (edge runtimes); pass the SDKs as options there.
let req;
export function loadPeer(name) {
  req ??= globalThis.process?.getBuiltinModule?.("node:module")?.createRequire(import.meta.url);
  if (!req) throw new Error(`keybrake: cannot load "${name}" here; pass it as an option: new Keybrake({ sdks: { ... } })`);
  return req(name);
}
