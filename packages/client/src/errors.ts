// Recognizing Keybrake's answers in whatever shape each SDK surfaces them.
//
// A cap hit is known by `X-Keybrake-Cap-Hit: true` or by the error type `cap_exhausted`,
// never by a 429 alone: a vendor's own 429 is a rate limit, which is worth retrying, while a
// cap hit lasts until 00:00 UTC.
import type { ErrorType } from "./openapi.gen.js";

/** An answer of Keybrake's admin API that was not a success, or Keybrake could not be reached. */
export class KeybrakeError extends Error {
  override name = "KeybrakeError";
  /** The HTTP status, or null when no answer came. */
  readonly status: number | null;
  /** Keybrake's error type (`X-Keybrake-Error`), or null. */
  readonly type: ErrorType | null;
  /** The answer's headers, lower-case names. */
  readonly headers: Record<string, string>;

  constructor(message: string, init: { status?: number | null; type?: ErrorType | null; headers?: Record<string, string>; cause?: unknown } = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status ?? null;
    this.type = init.type ?? null;
    this.headers = init.headers ?? {};
  }

  get capHit(): boolean {
    return isCapHit(this);
  }

  get retryable(): boolean {
    return isRetryable(this);
  }
}

/** Keybrake's refusals that may succeed later; every other one is final. */
const RETRYABLE_TYPES = new Set<string>(["idempotency_in_flight", "vendor_unreachable", "internal_error"]);
/** Keybrake's cap hits: a key's (or a parent's) cap, and an issuer's budget. */
const CAP_TYPES = new Set<string>(["cap_exhausted", "budget_exhausted"]);
/** Node's and undici's names for a connection that failed or dropped. */
const NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "EAI_AGAIN",
  "ENOTFOUND",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
]);

/** What the error says, whichever SDK (or `fetch`) produced it. */
interface Signal {
  status?: number;
  /** `X-Keybrake-Error`, or an error type in the body. */
  keybrakeType?: string;
  capHitHeader?: boolean;
  /** Stripe-Should-Retry, when present. */
  shouldRetry?: boolean;
  network?: boolean;
}

type Loose = Record<string, any>;

function header(headers: unknown, name: string): string | undefined {
  if (!headers || typeof headers !== "object") return undefined;
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  const value = (headers as Loose)[name] ?? (headers as Loose)[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : typeof value === "string" ? value : undefined;
}

function fromHeaders(headers: unknown): Signal {
  const should = header(headers, "stripe-should-retry");
  return {
    keybrakeType: header(headers, "x-keybrake-error"),
    capHitHeader: header(headers, "x-keybrake-cap-hit") === "true",
    shouldRetry: should === undefined ? undefined : should === "true",
  };
}

function signalOf(err: unknown): Signal | null {
  if (!err || typeof err !== "object") return null;
  const e = err as Loose;
  // A fetch Response.
  if (typeof Response !== "undefined" && err instanceof Response) return { status: e.status, ...fromHeaders(e.headers) };
  // Our own admin errors.
  if (err instanceof KeybrakeError) return { status: e.status ?? undefined, network: e.status === null, ...fromHeaders(e.headers), keybrakeType: e.type ?? undefined };
  // stripe-node: StripeError, with the answer's headers and the raw error body.
  if (typeof e.type === "string" && e.type.startsWith("Stripe")) {
    const signal: Signal = { status: e.statusCode, ...fromHeaders(e.headers) };
    signal.keybrakeType ??= e.raw?.type === "cap_exhausted" ? "cap_exhausted" : undefined;
    if (e.type === "StripeConnectionError") signal.network = true;
    return signal;
  }
  // twilio-node: RestException; twilioFor's http client copies Keybrake's headers into `details`.
  if (e.constructor?.name === "RestException" || (typeof e.status === "number" && "moreInfo" in e)) {
    const kb = e.details?.keybrake as Loose | undefined;
    return { status: e.status, keybrakeType: kb?.error, capHitHeader: kb?.cap_hit === true };
  }
  // resend: `{ name, message, statusCode }`; on Keybrake's refusals `name` is its error type.
  if (typeof e.name === "string" && "statusCode" in e && !(err instanceof Error)) {
    // With no status, resend's `application_error` is its word for a failed fetch.
    const network = e.statusCode == null && e.name === "application_error";
    return { status: e.statusCode ?? undefined, keybrakeType: e.name === "cap_exhausted" ? e.name : undefined, network };
  }
  // resend's whole answer, `{ data, error, headers }`.
  if ("data" in e && "error" in e && e.error) {
    const answer = fromHeaders(e.headers);
    const error = signalOf(e.error) ?? {};
    return { ...error, keybrakeType: answer.keybrakeType ?? error.keybrakeType, capHitHeader: answer.capHitHeader, shouldRetry: answer.shouldRetry };
  }
  // An axios error (twilio-node) or anything else carrying a response.
  if (e.response && typeof e.response === "object") {
    return { status: e.response.status ?? e.response.statusCode, ...fromHeaders(e.response.headers) };
  }
  const code = e.code ?? e.cause?.code;
  if (NETWORK_CODES.has(code) || e.name === "AbortError" || e.name === "TimeoutError" || (err instanceof TypeError && e.message === "fetch failed")) {
    return { network: true };
  }
  return null;
}

/** The error and its causes, outermost first (NonRetriableError and StepError wrap theirs). */
function* chain(err: unknown): Generator<unknown> {
  for (let depth = 0; err && depth < 8; depth++) {
    yield err;
    err = (err as Loose).cause;
  }
}

/**
 * True when Keybrake refused a call because the vault key's daily cap is spent: from a
 * stripe-node, twilio-node (through `twilioFor`) or resend error, a `fetch` Response, or a
 * KeybrakeError, also when wrapped (as `cause`).
 */
export function isCapHit(err: unknown): boolean {
  for (const e of chain(err)) {
    const s = signalOf(e);
    if (s && (s.capHitHeader || CAP_TYPES.has(s.keybrakeType ?? ""))) return true;
  }
  return false;
}

/**
 * True when trying the same call again later may succeed: a connection failure, a vendor's
 * 5xx or rate limit, or Keybrake's `idempotency_in_flight`, `vendor_unreachable`,
 * `internal_error`. False for refusals: a cap hit, a revoked or expired key, an endpoint off
 * the allowlist, a vendor's 4xx, and for errors it does not recognize.
 */
export function isRetryable(err: unknown): boolean {
  for (const e of chain(err)) {
    const s = signalOf(e);
    if (!s) continue;
    if (s.capHitHeader || CAP_TYPES.has(s.keybrakeType ?? "")) return false;
    if (s.keybrakeType) return RETRYABLE_TYPES.has(s.keybrakeType);
    if (s.shouldRetry !== undefined) return s.shouldRetry;
    if (s.network) return true;
    if (s.status === undefined) continue;
    return s.status === 408 || s.status === 409 || s.status === 429 || s.status >= 500;
  }
  return false;
}
