// What the client can tell from a credential's shape, without ever printing it.
import type { Vendor } from "./openapi.gen.js";

const VAULT_KEY = /^kb_(stripe|twilio|resend)_/;

/** The vendor a vault key is for, or null when the string is not shaped like a vault key. */
export function vaultKeyVendor(token: string): Vendor | null {
  return (VAULT_KEY.exec(token)?.[1] as Vendor | undefined) ?? null;
}

/** A vault key as a string, from the string or an issued key. */
export function vaultKeyOf(key: string | { vault_key: string }): string {
  return typeof key === "string" ? key : key.vault_key;
}
