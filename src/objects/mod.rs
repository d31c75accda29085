//! The Durable Object classes, each a thin wrapper over pure state from `ledger` or `core`:
//!
//! - [`vault_key`]: one `VaultKey` per vault key, the single authority on its spend and
//!   revocation. It keeps a [`crate::ledger::Ledger`] in SQLite and serializes every debit;
//!   its alarm does the work that must not sit on a request path.
//! - [`admin_guard`]: one `AdminGuard` per client address, counting failed admin tokens.
//!
//! They are called by the shell through `shell::objects`, with the typed messages of
//! [`crate::ledger::protocol`]; they never import the shell.

pub mod admin_guard;
pub mod vault_key;
