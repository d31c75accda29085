//! Thin helpers over the Workers runtime, shared by the shell and the object classes: Worker
//! vars and settings, the clock, D1 numbers, and calls to vendors ([`upstream`]). It imports
//! neither of them, so the two never import each other.

pub mod upstream;

use crate::core::settings::Settings;
use std::cell::OnceCell;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, web_sys, Env, ResponseBody};

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

/// A response's whole body. worker's `Response::bytes` and `text` read a streamed body chunk
/// by chunk through a stream reader from wasm: a promise and a copy per chunk, and the reader's
/// lock released after, which the profile put at about 0.25 ms of a proxied call's CPU over the
/// vendor's answer and the two object replies. Here the runtime reads it in one
/// `arrayBuffer()`, of a `Response` made around the same stream with no status or headers (so
/// no status of the original answer can make its construction throw).
pub async fn whole_body(resp: &worker::Response) -> worker::Result<Vec<u8>> {
    match resp.body() {
        ResponseBody::Empty => Ok(Vec::new()),
        ResponseBody::Body(bytes) => Ok(bytes.clone()),
        ResponseBody::Stream(stream) => {
            let whole = web_sys::Response::new_with_opt_readable_stream(Some(stream))?;
            let buffer = JsFuture::from(whole.array_buffer()?).await?;
            Ok(js_sys::Uint8Array::new(&buffer).to_vec())
        }
    }
}

/// An integer as a JS number, for D1 bindings. Every value passed (micro-dollars, ms
/// timestamps, counts) is far below 2^53, so none loses precision; none is float money.
pub fn js_number(n: u64) -> wasm_bindgen::JsValue {
    wasm_bindgen::JsValue::from(n as f64)
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}
