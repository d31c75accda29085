//! Thin helpers over the Workers runtime, shared by the shell and the object classes: Worker
//! vars and settings, the clock, D1 numbers, and calls to vendors ([`upstream`]). It imports
//! neither of them, so the two never import each other.

pub mod upstream;

use crate::core::settings::Settings;
use worker::Env;

/// A Worker var or secret by name: what vendor modules read price tables and ids from.
pub fn env_value(env: &Env, name: &str) -> Option<String> {
    env.var(name).map(|v| v.to_string()).or_else(|_| env.secret(name).map(|s| s.to_string())).ok()
}

/// Every knob, with its default when unset.
pub fn settings(env: &Env) -> Settings {
    Settings::from_vars(|name| env_value(env, name))
}

/// An integer as a JS number, for D1 bindings. Every value passed (micro-dollars, ms
/// timestamps, counts) is far below 2^53, so none loses precision; none is float money.
pub fn js_number(n: u64) -> wasm_bindgen::JsValue {
    wasm_bindgen::JsValue::from(n as f64)
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}
