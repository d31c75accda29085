//! One `VaultKey` Durable Object per vault key. It is the single authority on the key's
//! spend and revocation, and serializes every debit.
//!
//! - [`ledger`]: the state machine (pure, unit-tested on the host);
//! - [`protocol`]: the typed messages the Worker sends it;
//! - `vault_key` (wasm only): the thin class that stores the ledger in SQLite and flushes
//!   the audit outbox to D1.
//!
//! [`admin_guard`] is the other class: it counts failed admin authentications per client IP.

pub mod admin_guard;
pub mod ledger;
pub mod protocol;
#[cfg(target_arch = "wasm32")]
pub mod vault_key;
