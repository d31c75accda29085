//! Thin helpers over the Workers runtime, shared by the shell and the object classes: Worker
//! vars and settings, the clock, D1 numbers, and calls to vendors ([`upstream`]). It imports
//! neither of them, so the two never import each other.

pub mod upstream;

use crate::core::settings::Settings;
use std::cell::OnceCell;
use worker::Env;

/// A Worker var or secret by name: what vendor modules read price tables and ids from.
pub fn env_value(env: &Env, name: &str) -> Option<String> {
    env.var(name).map(|v| v.to_string()).or_else(|_| env.secret(name).map(|s| s.to_string())).ok()
}

thread_local! {
    /// The settings, read from the vars once per isolate: an isolate runs one version of the
    /// Worker, whose vars never change (new vars are a new version, in new isolates).
    static SETTINGS: OnceCell<Settings> = const { OnceCell::new() };
}

/// Every knob, with its default when unset. Reading the four vars took about 3% of a proxied
/// call's CPU when it was done on every use (`make bench-profile`); it is done once.
pub fn settings(env: &Env) -> Settings {
    SETTINGS.with(|cached| *cached.get_or_init(|| Settings::from_vars(|name| env_value(env, name))))
}

/// An integer as a JS number, for D1 bindings. Every value passed (micro-dollars, ms
/// timestamps, counts) is far below 2^53, so none loses precision; none is float money.
pub fn js_number(n: u64) -> wasm_bindgen::JsValue {
    wasm_bindgen::JsValue::from(n as f64)
}

/// A query's bound values, as D1 takes them.
pub fn d1_binds(binds: Vec<crate::core::audit::SqlValue>) -> Vec<wasm_bindgen::JsValue> {
    use crate::core::audit::SqlValue;
    binds
        .into_iter()
        .map(|b| match b {
            SqlValue::Text(t) => wasm_bindgen::JsValue::from(t),
            SqlValue::Int(n) => js_number(n),
        })
        .collect()
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}
