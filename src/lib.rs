//! Keybrake: an edge proxy that holds real vendor secrets and gives each AI-agent run a
//! short-lived vault key with a dollar cap, an endpoint allowlist and a TTL.
//!
//! Every proxied call takes the same path:
//!
//! 1. **authenticate**: the vault key is parsed ([`core::token`]); the key's id names its
//!    Durable Object;
//! 2. **reserve**: the `VaultKey` object ([`durable_objects`]) checks revocation, expiry, the
//!    allowlist, the price ([`core::cost`]) and the daily cap, and holds the price, all in
//!    one uninterrupted step;
//! 3. **forward**: the Worker ([`shell`]) sends the call upstream with the real secret;
//! 4. **settle**: the object debits the real cost, releases the hold, or keeps it when the
//!    outcome is unknown;
//! 5. **audit**: the same step writes the audit row to the object's outbox, which is copied
//!    to D1 off the request path.
//!
//! [`core`] is pure and tested natively; [`shell`] is the thin wasm layer around it.

pub mod core;
#[path = "../durable_objects/mod.rs"]
pub mod durable_objects;
#[cfg(target_arch = "wasm32")]
pub mod shell;
