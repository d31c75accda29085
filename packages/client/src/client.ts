// The admin client and the vendor clients, from one base URL.
import type StripeSdk from "stripe";
import type { Twilio } from "twilio";
import type { Resend } from "resend";
import type {
  AuditPage,
  AuditQuery,
  ErrorType,
  IssuedChildKey,
  IssuedIssuer,
  IssuedKey,
  Issuer,
  IssuerList,
  IssuerRevoked,
  KeyState,
  NewChildKey,
  NewIssuer,
  NewKey,
  Refresh,
  Revoked,
  RunRevoked,
  Vendor,
} from "./api.js";
import { KeybrakeError } from "./errors.js";
import { vaultKeyOf, vaultKeyVendor } from "./token.js";
import { resendClient, stripeClient, twilioClient, type VendorSdks } from "./vendors.js";

export interface KeybrakeOptions {
  /** Where Keybrake runs, e.g. `https://keybrake.example.workers.dev` or `http://127.0.0.1:8787`. */
  baseUrl: string | URL;
  /**
   * The admin bearer: KEYBRAKE_API_KEY, or an issuer token (`kbi_…`). Needed for the admin
   * calls only; an agent that holds just a vault key leaves it out.
   */
  token?: string;
  /** The fetch to use; default the global one. */
  fetch?: typeof fetch;
  /** The vendor SDK modules, where they cannot be loaded by name (bundlers, edge runtimes). */
  sdks?: VendorSdks;
}

type AnyKey = string | { vault_key: string };

/** Keybrake's admin API and the vendor SDKs pointed at it. */
export class Keybrake {
  readonly baseUrl: URL;
  readonly keys: KeysApi;
  readonly audit: AuditApi;
  readonly issuers: IssuersApi;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #sdks: VendorSdks;

  constructor(options: KeybrakeOptions) {
    if (!options || typeof options !== "object") throw new TypeError("keybrake: new Keybrake({ baseUrl, token })");
    this.baseUrl = parseBaseUrl(options.baseUrl);
    this.#token = checkAdminToken(options.token);
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.#sdks = options.sdks ?? {};
    this.keys = new KeysApi(this);
    this.audit = new AuditApi(this);
    this.issuers = new IssuersApi(this);
  }

  /** stripe-node with the vault key, sending to Keybrake. `options` go to `new Stripe`. */
  stripeFor(key: AnyKey, options: Record<string, unknown> = {}): StripeSdk {
    return stripeClient(this.baseUrl, checkVaultKey(key, "stripe"), this.#sdks, options);
  }

  /** twilio-node with the vault key as its auth token, sending to Keybrake's `/twilio` route. */
  twilioFor(key: AnyKey, options: Record<string, unknown> = {}): Twilio {
    return twilioClient(this.baseUrl, checkVaultKey(key, "twilio"), this.#sdks, options);
  }

  /** The resend SDK with the vault key, sending to Keybrake's `/resend` route. */
  resendFor(key: AnyKey, options: Record<string, unknown> = {}): Resend {
    return resendClient(this.baseUrl, checkVaultKey(key, "resend"), this.#sdks, options);
  }

  /**
   * One call to Keybrake's API. `auth` is the bearer to send; default the admin token.
   * Throws KeybrakeError for anything but a 2xx JSON answer.
   */
  async request<T>(method: string, path: string, init: { body?: unknown; query?: Record<string, string | number | undefined>; auth?: string } = {}): Promise<T> {
    const bearer = init.auth ?? this.#adminToken(method, path);
    const url = new URL(path.replace(/^\//, ""), this.baseUrl);
    for (const [name, value] of Object.entries(init.query ?? {})) if (value !== undefined) url.searchParams.set(name, String(value));
    let res: Response;
    try {
      res = await this.#fetch(url, {
        method,
        headers: {
          authorization: `Bearer ${bearer}`,
          accept: "application/json",
          ...(init.body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: init.body === undefined ? undefined : JSON.stringify(init.body),
      });
    } catch (cause) {
      const why = (cause as { cause?: { code?: string } }).cause?.code ?? (cause as Error).message;
      throw new KeybrakeError(`keybrake: could not reach Keybrake at ${this.baseUrl.origin} (${why}); is baseUrl right and is it running?`, { cause });
    }
    const headers = Object.fromEntries(res.headers);
    const text = await res.text();
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const type = (res.headers.get("x-keybrake-error") ?? json?.error?.type ?? null) as ErrorType | null;
    if (json === undefined || (!res.ok && !type)) {
      throw new KeybrakeError(
        `keybrake: ${method} ${url.pathname} got HTTP ${res.status} (${res.headers.get("content-type") ?? "no content type"}) that is not Keybrake's answer; is baseUrl (${this.baseUrl.origin}) Keybrake?`,
        { status: res.status, headers },
      );
    }
    if (!res.ok) {
      const hint = type === "unauthorized" ? " (the token must be KEYBRAKE_API_KEY or an issuer token)" : "";
      throw new KeybrakeError(`keybrake: ${method} ${url.pathname}: ${res.status} ${type}: ${json?.error?.message ?? ""}${hint}`, {
        status: res.status,
        type,
        headers,
      });
    }
    return json as T;
  }

  #adminToken(method: string, path: string): string {
    if (!this.#token) {
      throw new Error(`keybrake: ${method} ${path} is an admin call; pass the admin token: new Keybrake({ baseUrl, token: process.env.KEYBRAKE_API_KEY })`);
    }
    return this.#token;
  }
}

class KeysApi {
  constructor(readonly kb: Keybrake) {}

  /** `POST /vault/keys`. The answer's `vault_key` is shown only here. */
  issue(body: NewKey): Promise<IssuedKey> {
    return this.kb.request("POST", "/vault/keys", { body });
  }
  /** `GET /vault/keys/{id}`: spend, holds and status. */
  get(keyId: string): Promise<KeyState> {
    return this.kb.request("GET", `/vault/keys/${keyIdPath(keyId)}`);
  }
  /** `DELETE /vault/keys/{id}`; answers once nothing can reach the vendor with the key. */
  revoke(keyId: string): Promise<Revoked> {
    return this.kb.request("DELETE", `/vault/keys/${keyIdPath(keyId)}`);
  }
  /** `POST /vault/keys/{id}/refresh`: moves an active key's expiry. */
  refresh(keyId: string, body: Refresh = {}): Promise<KeyState> {
    return this.kb.request("POST", `/vault/keys/${keyIdPath(keyId)}/refresh`, { body });
  }
  /** `DELETE /vault/keys?agent_run_label=…`: revokes every key of a run, children included. */
  revokeRun(agentRunLabel: string): Promise<RunRevoked> {
    if (!agentRunLabel) throw new TypeError("keybrake: revokeRun needs the run's agent_run_label");
    return this.kb.request("DELETE", "/vault/keys", { query: { agent_run_label: agentRunLabel } });
  }
  /**
   * `POST /vault/keys/{parent}/children`: a child key for one branch of a fan-out, with its own
   * cap inside the parent's. Authenticated with the parent's vault key, not the admin token.
   */
  children(parent: AnyKey, body: NewChildKey): Promise<IssuedChildKey> {
    const vaultKey = checkVaultKey(parent);
    const parentId = vaultKey.split("_")[2];
    return this.kb.request("POST", `/vault/keys/${parentId}/children`, { body, auth: vaultKey });
  }
}

class AuditApi {
  constructor(readonly kb: Keybrake) {}

  /** One page of `GET /vault/audit`, for exactly one of keyId, agentRunLabel or issuerId. */
  list(query: AuditQuery): Promise<AuditPage> {
    const by = { key_id: query.keyId, agent_run_label: query.agentRunLabel, issuer_id: query.issuerId };
    if (Object.values(by).filter((v) => v !== undefined).length !== 1) {
      throw new TypeError("keybrake: audit.list needs exactly one of keyId, agentRunLabel or issuerId");
    }
    return this.kb.request("GET", "/vault/audit", {
      query: {
        ...by,
        limit: query.limit,
        order: query.order,
        starting_after: query.startingAfter,
        ending_before: query.endingBefore,
        decision: query.decision,
        outcome: query.outcome,
      },
    });
  }

  /** Every row, page after page. */
  async *all(query: Omit<AuditQuery, "startingAfter" | "endingBefore">): AsyncGenerator<AuditPage["calls"][number]> {
    let startingAfter: string | undefined;
    for (;;) {
      const page = await this.list({ ...query, startingAfter });
      yield* page.calls;
      if (!page.has_more || page.calls.length === 0) return;
      startingAfter = page.calls[page.calls.length - 1]!.id;
    }
  }
}

class IssuersApi {
  constructor(readonly kb: Keybrake) {}

  /** `POST /vault/issuers` (root token): the answer's `issuer_token` is shown only here. */
  create(body: NewIssuer): Promise<IssuedIssuer> {
    return this.kb.request("POST", "/vault/issuers", { body });
  }
  list(): Promise<IssuerList> {
    return this.kb.request("GET", "/vault/issuers");
  }
  get(issuerId: string): Promise<Issuer> {
    return this.kb.request("GET", `/vault/issuers/${encodeURIComponent(issuerId)}`);
  }
  delete(issuerId: string): Promise<IssuerRevoked> {
    return this.kb.request("DELETE", `/vault/issuers/${encodeURIComponent(issuerId)}`);
  }
}

/** The base URL, checked: an absolute http(s) URL, without credentials, query or fragment. */
function parseBaseUrl(value: string | URL): URL {
  const example = "such as https://keybrake.example.workers.dev or http://127.0.0.1:8787";
  if (value === undefined || value === null || value === "") throw new TypeError(`keybrake: baseUrl is missing; give Keybrake's URL, ${example}`);
  let url: URL;
  try {
    url = new URL(String(value));
  } catch {
    throw new TypeError(`keybrake: baseUrl "${String(value)}" is not an absolute URL; give one ${example}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`keybrake: baseUrl must use http: or https:, not ${url.protocol} (${example})`);
  }
  if (url.username || url.password) throw new TypeError("keybrake: baseUrl must not carry credentials; pass the admin token as `token`");
  if (url.search || url.hash) throw new TypeError(`keybrake: baseUrl must not have a query or fragment (${example})`);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

function checkAdminToken(token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  if (typeof token !== "string" || token === "") throw new TypeError("keybrake: token must be a non-empty string (KEYBRAKE_API_KEY or an issuer token)");
  const vendor = vaultKeyVendor(token);
  if (vendor) {
    throw new TypeError(
      `keybrake: token is a ${vendor} vault key, not the admin token. Pass KEYBRAKE_API_KEY (or an issuer token, kbi_…) as token; give vault keys to ${vendor}For(vaultKey)`,
    );
  }
  return token;
}

/** The vault key as a string, checked to be one (and for `vendor`, when given). */
function checkVaultKey(key: AnyKey, vendor?: Vendor): string {
  const vaultKey = key && vaultKeyOf(key);
  const found = typeof vaultKey === "string" ? vaultKeyVendor(vaultKey) : null;
  if (!found) {
    throw new TypeError(
      "keybrake: expected a vault key (kb_<vendor>_…, from keys.issue()), got something else; the admin token never goes to a vendor client",
    );
  }
  if (vendor && found !== vendor) throw new TypeError(`keybrake: this vault key is for ${found}, not ${vendor}; use ${found}For()`);
  return vaultKey;
}

function keyIdPath(keyId: string): string {
  if (typeof keyId !== "string" || keyId === "") throw new TypeError("keybrake: a key id is needed");
  if (vaultKeyVendor(keyId)) throw new TypeError("keybrake: pass the key's key_id, not its vault key");
  return encodeURIComponent(keyId);
}
