// The official vendor SDKs, pointed at Keybrake. Each SDK has its own way to change where it
// sends requests: Stripe takes host, port and protocol; Twilio a custom http client; Resend a
// base URL.
import type StripeSdk from "stripe";
import type { Twilio } from "twilio";
import type { Resend } from "resend";
import { loadPeer } from "./load-peer.js";

/** The vendor SDK modules; pass them to use your own copies instead of loading them by name. */
export interface VendorSdks {
  stripe?: unknown;
  twilio?: unknown;
  resend?: unknown;
}

/** The account sid twilio-node puts in paths; Keybrake replaces it with the one it holds. */
const TWILIO_PLACEHOLDER_SID = "ACkeybrake";

function sdk(sdks: VendorSdks, name: keyof VendorSdks): any {
  if (sdks[name]) return sdks[name];
  try {
    return loadPeer(name);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "MODULE_NOT_FOUND" || code === "ERR_MODULE_NOT_FOUND") {
      throw new Error(`keybrake: the "${name}" package is not installed; npm i ${name}`, { cause: err });
    }
    throw err;
  }
}

export function stripeClient(origin: URL, vaultKey: string, sdks: VendorSdks, options: Record<string, unknown>): StripeSdk {
  if (origin.pathname !== "/") {
    throw new Error(
      `keybrake: stripe-node cannot send requests under a path prefix, and baseUrl has one (${origin.pathname}); serve Keybrake at the root of its host`,
    );
  }
  const mod = sdk(sdks, "stripe");
  const Stripe = mod.default ?? mod.Stripe ?? mod;
  const https = origin.protocol === "https:";
  return new Stripe(vaultKey, {
    host: origin.hostname,
    port: Number(origin.port || (https ? 443 : 80)),
    protocol: https ? "https" : "http",
    ...options,
  });
}

export function twilioClient(origin: URL, vaultKey: string, sdks: VendorSdks, options: Record<string, unknown>): Twilio {
  const mod = sdk(sdks, "twilio");
  const twilio = mod.default ?? mod;
  const base = origin.href.replace(/\/$/, "") + "/twilio";
  class KeybrakeRequestClient extends twilio.RequestClient {
    async request(opts: { uri: string }) {
      const uri = new URL(opts.uri);
      const res = await super.request({ ...opts, uri: `${base}${uri.pathname}${uri.search}` });
      return withKeybrakeDetails(res);
    }
  }
  return twilio(TWILIO_PLACEHOLDER_SID, vaultKey, { httpClient: new KeybrakeRequestClient(), ...options });
}

/**
 * twilio-node's RestException keeps the body's `details` but no headers: copy Keybrake's error
 * headers there, so isCapHit and isRetryable can read them.
 */
function withKeybrakeDetails(res: { statusCode: number; body: unknown; headers: any }) {
  const get = (name: string): string | undefined => res.headers?.get?.(name) ?? res.headers?.[name];
  const error = get("x-keybrake-error");
  if (!error || res.statusCode < 400) return res;
  let body: any = res.body;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return res;
    }
  }
  if (!body || typeof body !== "object") return res;
  const keybrake = { error, cap_hit: get("x-keybrake-cap-hit") === "true" };
  return { ...res, body: { ...body, details: { ...(body.details ?? {}), keybrake } } };
}

export function resendClient(origin: URL, vaultKey: string, sdks: VendorSdks, options: Record<string, unknown>): Resend {
  const mod = sdk(sdks, "resend");
  const Resend = mod.Resend ?? mod.default?.Resend;
  return new Resend(vaultKey, { baseUrl: origin.href.replace(/\/$/, "") + "/resend", ...options });
}
