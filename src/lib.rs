//! Keybrake: an edge proxy that holds real vendor secrets and gives each AI-agent run a
//! short-lived vault key with a dollar cap, an endpoint allowlist and a TTL.
//!
//! Every proxied call takes the same path (`shell::proxy`, one named phase each):
//!
//! 1. **authenticate**: the vault key is parsed ([`core::token`]); the key's id names its
//!    Durable Object, which checks the secret;
//! 2. **reserve**: the `VaultKey` object checks revocation, expiry, the allowlist, the price
//!    ([`core::cost`]), the daily cap and every limit above it (a parent's cap, an issuer's
//!    budget: [`ledger::tree`]), and holds the price, all in one uninterrupted step of the pure
//!    [`ledger`];
//! 3. **forward**: the Worker sends the call upstream with the real secret, in `waitUntil`;
//! 4. **settle**: the object debits the real cost, releases the hold, or keeps it when the
//!    outcome is unknown, as one pure rule decides ([`core::answer`]);
//! 5. **audit**: the same step writes the audit row to the object's outbox, which its alarm
//!    copies to D1 off the request path.
//!
//! The layers point one way (a test in `tests/layers.rs` holds them to it):
//!
//! - [`core`]: pure rules (routing, allowlists, costs, tokens, errors, settings);
//! - [`ledger`]: the pure per-key ledger, the tree of keys one object holds, and the messages to
//!   its object; imports `core` only;
//! - `runtime` (wasm): vars, the clock and vendor calls, shared by the two layers above it;
//! - `objects` (wasm): the Durable Object classes and their SQLite stores;
//! - `shell` (wasm): the Worker's entry, router, proxy and admin API.
//!
//! `core` and `ledger` never import `worker` and are tested natively with `cargo test`.

pub mod core;
#[cfg(test)]
mod docs;
pub mod ledger;
#[cfg(target_arch = "wasm32")]
mod objects;
#[cfg(target_arch = "wasm32")]
mod runtime;
#[cfg(target_arch = "wasm32")]
mod shell;
