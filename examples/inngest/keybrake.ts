// A small helper for Inngest functions that call vendors through Keybrake.
//
// - `issueVaultKey` issues the run's vault key inside a step, so Inngest memoizes it: every
//   retry and replay of the run reuses the same key, and the cap spans the whole run.
// - `stripeFor` points the official Stripe SDK at Keybrake (host, port and protocol only).
// - `guarded` turns a cap hit into a NonRetriableError: the cap is a deliberate stop, and
//   retrying into it only burns attempts.
import { NonRetriableError } from "inngest";
import Stripe from "stripe";

export interface KeybrakeConfig {
  /** Where Keybrake runs, e.g. https://keybrake.example.workers.dev */
  url: string;
  /** The admin bearer token, KEYBRAKE_API_KEY. Only the key-issuing step needs it. */
  adminKey: string;
}

export interface VaultKeyRequest {
  vendor: "stripe" | "twilio" | "resend";
  daily_usd_cap: number;
  allowed_endpoints: string[];
  expires_in?: string | number;
  agent_run_label?: string;
  max_usd_per_call?: number;
}

export interface VaultKey {
  keyId: string;
  vaultKey: string;
  expiresAt: string;
}

/** The part of Inngest's step tooling the helper needs. */
interface Steps {
  run<T>(id: string, fn: () => Promise<T>): Promise<unknown>;
}

export function keybrakeFromEnv(env: NodeJS.ProcessEnv = process.env): KeybrakeConfig {
  const url = env.KEYBRAKE_URL;
  const adminKey = env.KEYBRAKE_API_KEY;
  if (!url || !adminKey) throw new NonRetriableError("KEYBRAKE_URL and KEYBRAKE_API_KEY must be set");
  return { url, adminKey };
}

/** Issues the run's vault key in a memoized step named `issue-vault-key`. */
export async function issueVaultKey(step: Steps, config: KeybrakeConfig, request: VaultKeyRequest): Promise<VaultKey> {
  return (await step.run("issue-vault-key", async (): Promise<VaultKey> => {
    const res = await fetch(new URL("/vault/keys", config.url), {
      method: "POST",
      headers: { authorization: `Bearer ${config.adminKey}`, "content-type": "application/json" },
      body: JSON.stringify(request),
    });
    const body = await res.json();
    // A refused key request will not get better by retrying.
    if (res.status === 400 || res.status === 401) {
      throw new NonRetriableError(`Keybrake refused the vault key: ${body?.error?.message ?? res.status}`);
    }
    if (!res.ok) throw new Error(`Keybrake could not issue a vault key: ${res.status}`);
    return { keyId: body.key_id, vaultKey: body.vault_key, expiresAt: body.expires_at };
  })) as VaultKey;
}

/** The Stripe SDK, talking to Keybrake with the vault key instead of a real secret. */
export function stripeFor(key: VaultKey, config: KeybrakeConfig, options: Stripe.StripeConfig = {}): Stripe {
  const url = new URL(config.url);
  const protocol = url.protocol === "http:" ? "http" : "https";
  return new Stripe(key.vaultKey, {
    host: url.hostname,
    port: Number(url.port || (protocol === "http" ? 80 : 443)),
    protocol,
    ...options,
  });
}

/** True when Keybrake refused a call because the key's cap is spent. */
export function isCapHit(err: unknown): boolean {
  const e = err as { headers?: Record<string, string>; raw?: { type?: string } } | null;
  return e?.headers?.["x-keybrake-cap-hit"] === "true" || e?.raw?.type === "cap_exhausted";
}

/** Runs a vendor call, ending the run (no retries) if the vault key's cap is spent. */
export async function guarded<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (isCapHit(err)) {
      throw new NonRetriableError("Vendor spend cap exhausted for this run", { cause: err });
    }
    throw err;
  }
}
