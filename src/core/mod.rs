//! The pure core: everything Keybrake decides, with no dependency on the Workers runtime.
//! It never reads a clock or the network; the shell passes those in. Tested with `cargo test`.

pub mod alerts;
pub mod allowlist;
pub mod answer;
pub mod audit;
pub mod clock;
pub mod cost;
pub mod encoding;
pub mod error;
pub mod keys;
pub mod lineage;
pub mod listing;
pub mod lockout;
pub mod money;
pub mod routing;
pub mod screen;
pub mod settings;
pub mod token;
pub mod vendor;
