//! Slows down guessing of the admin token: one `AdminGuard` object per client address counts
//! failed admin authentications in a window, and past a limit further failures from that
//! address are answered 429 until the window ends. The right token is never refused: it is
//! checked before the guard is asked, so whoever shares the operator's address (an agent on the
//! same egress) cannot lock the operator out of a revoke. The token itself is a random secret of
//! at least 32 characters, so the guard slows noise, not a feasible search.
//!
//! IPv6 clients are counted by their /64, which one host can rotate through at will.
//!
//! This is the guard's pure window; the class is `objects::admin_guard`. The count lives in
//! memory: a guard that is evicted forgets, which only ever lets a client through sooner. It
//! never touches vault keys or the proxy path.

use serde::{Deserialize, Serialize};

pub const WINDOW_MS: u64 = 10 * 60 * 1_000;

/// One client's failures in the current window.
#[derive(Debug, Default)]
pub struct FailureWindow {
    started_ms: u64,
    failures: u32,
}

/// One failed admin authentication, with the limit in force.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    pub limit: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    /// Seconds until the client may try again, when it is locked out.
    pub locked_for_secs: Option<u64>,
}

/// The bucket a client address is counted in: an IPv4 address, or the /64 of an IPv6 one.
pub fn client_bucket(ip: &str) -> String {
    let ip = ip.trim();
    if !ip.contains(':') {
        return if ip.is_empty() { "unknown".into() } else { ip.to_ascii_lowercase() };
    }
    // Expand `::` so that the first four groups are the /64, whatever the textual form.
    let (head, tail) = ip.split_once("::").unwrap_or((ip, ""));
    let groups = |s: &str| s.split(':').filter(|g| !g.is_empty()).map(str::to_string).collect::<Vec<_>>();
    let (head, tail) = (groups(head), groups(tail));
    let missing = 8usize.saturating_sub(head.len() + tail.len());
    let full: Vec<String> = head.into_iter().chain(std::iter::repeat_n("0".to_string(), missing)).chain(tail).collect();
    let prefix: Vec<String> =
        full.iter().take(4).map(|g| format!("{:x}", u16::from_str_radix(g, 16).unwrap_or(0))).collect();
    format!("{}::/64", prefix.join(":"))
}

impl FailureWindow {
    /// Records one failed admin authentication and says whether the client is locked out.
    pub fn fail(&mut self, now_ms: u64, failure: &Failure) -> Verdict {
        if now_ms >= self.started_ms + WINDOW_MS {
            *self = FailureWindow { started_ms: now_ms, failures: 0 };
        }
        self.failures = self.failures.saturating_add(1);
        let locked = self.failures > failure.limit;
        let left_ms = (self.started_ms + WINDOW_MS).saturating_sub(now_ms);
        Verdict { locked_for_secs: locked.then(|| left_ms.div_ceil(1_000).max(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_838_767_000;

    const LIMIT: Failure = Failure { limit: 3 };

    #[test]
    fn locks_out_failures_past_the_limit() {
        let mut w = FailureWindow::default();
        for _ in 0..3 {
            assert_eq!(w.fail(T0, &LIMIT).locked_for_secs, None);
        }
        assert_eq!(w.fail(T0 + 1_000, &LIMIT).locked_for_secs, Some(WINDOW_MS / 1_000 - 1));
    }

    #[test]
    fn the_window_ends() {
        let mut w = FailureWindow::default();
        for _ in 0..5 {
            w.fail(T0, &LIMIT);
        }
        assert!(w.fail(T0 + 1, &LIMIT).locked_for_secs.is_some());
        assert_eq!(w.fail(T0 + WINDOW_MS, &LIMIT).locked_for_secs, None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let bucket = client_bucket("2001:db8:85a3:0:1:2:3:4");
        assert_eq!(bucket, "2001:db8:85a3:0::/64");
        for same in ["2001:db8:85a3::9", "2001:0db8:85a3:0000:ffff::1", "2001:DB8:85A3:0:aaaa:bbbb:cccc:dddd"] {
            assert_eq!(client_bucket(same), bucket, "{same}");
        }
        assert_ne!(client_bucket("2001:db8:85a3:1::1"), bucket);
        assert_eq!(client_bucket("::1"), "0:0:0:0::/64");
        assert_eq!(client_bucket("203.0.113.7"), "203.0.113.7");
        assert_eq!(client_bucket(""), "unknown");
    }
}
