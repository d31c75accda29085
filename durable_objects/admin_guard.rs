//! Slows down guessing of the admin token: one `AdminGuard` object per client IP counts
//! failed admin authentications in a window, and past a limit every admin call from that IP is
//! answered 429, even one with the right token, until the window ends.
//!
//! The count lives in memory: a guard that is evicted forgets, which only ever lets a client
//! through sooner. It never touches vault keys or the proxy path.

use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: u32 = 20;
pub const WINDOW_MS: u64 = 10 * 60 * 1_000;

/// One client's failures in the current window.
#[derive(Debug, Default)]
pub struct FailureWindow {
    started_ms: u64,
    failures: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Attempt {
    /// Whether the presented admin token was right.
    pub ok: bool,
    pub limit: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    /// Seconds until the client may try again, when it is locked out.
    pub locked_for_secs: Option<u64>,
}

impl FailureWindow {
    /// Records one admin attempt and says whether the client is locked out.
    pub fn attempt(&mut self, now_ms: u64, attempt: &Attempt) -> Verdict {
        if now_ms >= self.started_ms + WINDOW_MS {
            *self = FailureWindow { started_ms: now_ms, failures: 0 };
        }
        if !attempt.ok {
            self.failures = self.failures.saturating_add(1);
        }
        let locked = self.failures > attempt.limit;
        let left_ms = (self.started_ms + WINDOW_MS).saturating_sub(now_ms);
        Verdict { locked_for_secs: locked.then(|| left_ms.div_ceil(1_000).max(1)) }
    }
}

#[cfg(target_arch = "wasm32")]
mod class {
    use super::{Attempt, FailureWindow};
    use std::cell::RefCell;
    use worker::{durable_object, Date, DurableObject, Env, Request, Response, Result, State};

    #[durable_object]
    pub struct AdminGuard {
        window: RefCell<FailureWindow>,
    }

    impl DurableObject for AdminGuard {
        fn new(_state: State, _env: Env) -> Self {
            AdminGuard { window: RefCell::new(FailureWindow::default()) }
        }

        async fn fetch(&self, mut req: Request) -> Result<Response> {
            let attempt: Attempt = serde_json::from_str(&req.text().await?)?;
            let verdict = self.window.borrow_mut().attempt(Date::now().as_millis(), &attempt);
            Response::from_json(&verdict)
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use class::AdminGuard;

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_838_767_000;

    fn attempt(ok: bool) -> Attempt {
        Attempt { ok, limit: 3 }
    }

    #[test]
    fn locks_out_after_the_limit_even_with_the_right_token() {
        let mut w = FailureWindow::default();
        for _ in 0..3 {
            assert_eq!(w.attempt(T0, &attempt(false)).locked_for_secs, None);
        }
        assert_eq!(w.attempt(T0, &attempt(true)).locked_for_secs, None, "at the limit, not past it");
        assert_eq!(w.attempt(T0 + 1_000, &attempt(false)).locked_for_secs, Some(WINDOW_MS / 1_000 - 1));
        assert!(w.attempt(T0 + 2_000, &attempt(true)).locked_for_secs.is_some());
    }

    #[test]
    fn the_window_ends() {
        let mut w = FailureWindow::default();
        for _ in 0..5 {
            w.attempt(T0, &attempt(false));
        }
        assert!(w.attempt(T0 + 1, &attempt(true)).locked_for_secs.is_some());
        assert_eq!(w.attempt(T0 + WINDOW_MS, &attempt(true)).locked_for_secs, None);
    }
}
