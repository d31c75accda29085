//! Unit tests of the ledger on the host, against [`MemoryStore`].

use super::*;
use crate::core::clock::MS_PER_DAY;
use crate::core::vendor::Vendor;

const T0: u64 = 1_795_838_767_000; // 2026-11-28T04:06:07Z
const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn config(cap: u64, max_per_call: Option<u64>) -> KeyConfig {
    KeyConfig {
        key_id: ID.into(),
        vendor: Vendor::Stripe,
        daily_cap: Micros(cap),
        max_per_call: max_per_call.map(Micros),
        allowed_endpoints: vec!["POST /v1/payment_intents".into(), "GET /v1/payment_intents/{id}".into()],
        created_at_ms: T0,
        expires_at_ms: T0 + 7 * MS_PER_DAY,
        agent_run_label: Some("run-1".into()),
        stripe_account: None,
        allow_expand: false,
        issuer_id: None,
        parent_key_id: None,
        alert_thresholds: vec![],
    }
}

fn hash() -> SecretHash {
    SecretHash::of(b"secret")
}

fn new_ledger(cap: u64) -> (MemoryStore, Ledger) {
    let store = MemoryStore::default();
    let ledger = Ledger::create(&store, config(cap, None), hash()).unwrap();
    (store, ledger)
}

/// The fingerprint the Worker would compute: here, from what differs between test calls.
fn fingerprint_of(path: &str, price: &Result<u64, ProxyError>) -> String {
    format!("POST {path} {price:?}")
}

fn call(price: Result<u64, ProxyError>) -> ReserveCall {
    ReserveCall {
        fingerprint: fingerprint_of("/v1/payment_intents", &price),
        vendor: Vendor::Stripe,
        secret_hash: hash(),
        method: "POST".into(),
        path: "/v1/payment_intents".into(),
        price: price.map(|amount| Quote::Fixed { amount: Micros(amount) }),
        idempotency_key: None,
        idempotent: false,
        stripe_account: None,
        expand: false,
        refused: None,
    }
}

fn reserve(ledger: &mut Ledger, store: &MemoryStore, now: u64, amount: u64) -> Result<Reservation, ProxyError> {
    ledger.reserve(store, now, call(Ok(amount))).unwrap().map(|a| a.reservation)
}

fn finish(ledger: &mut Ledger, store: &MemoryStore, now: u64, id: u64, result: CallResult) {
    let call = FinishCall {
        reservation_id: id,
        result,
        status: Some(200),
        vendor_object_id: Some("pi_1".into()),
        latency_ms: 4,
        reconcile_path: None,
        replay: None,
    };
    ledger.finish(store, now, call).unwrap();
}

fn settle(ledger: &mut Ledger, store: &MemoryStore, now: u64, r: &Reservation) {
    finish(ledger, store, now, r.id, CallResult::Settled { cost: r.amount });
}

#[test]
fn a_thirty_cent_cap_admits_exactly_three_ten_cent_calls() {
    let (store, mut ledger) = new_ledger(300_000);
    for _ in 0..3 {
        let r = reserve(&mut ledger, &store, T0, 100_000).unwrap();
        settle(&mut ledger, &store, T0, &r);
    }
    let err = reserve(&mut ledger, &store, T0, 100_000).unwrap_err();
    assert!(matches!(err, ProxyError::CapExhausted { .. }));
    let state = ledger.state(T0, 0);
    assert_eq!((state.spent, state.reserved, state.remaining()), (Micros(300_000), Micros::ZERO, Micros::ZERO));
}

#[test]
fn open_reservations_count_against_the_cap() {
    let (store, mut ledger) = new_ledger(300_000);
    let held: Vec<_> = (0..3).map(|_| reserve(&mut ledger, &store, T0, 100_000).unwrap()).collect();
    assert!(reserve(&mut ledger, &store, T0, 1).is_err(), "spent + reserved is at the cap");
    finish(&mut ledger, &store, T0, held[0].id, CallResult::Released);
    assert!(reserve(&mut ledger, &store, T0, 100_000).is_ok(), "a release frees its money");
}

#[test]
fn cap_hits_say_when_the_day_resets() {
    let (store, mut ledger) = new_ledger(0);
    assert_eq!(reserve(&mut ledger, &store, T0, 1), Err(ProxyError::key_cap(secs_until_next_utc_day(T0))));
    assert!(reserve(&mut ledger, &store, T0, 0).is_ok(), "free calls pass a zero cap");
}

#[test]
fn checks_run_in_the_contract_order() {
    let store = MemoryStore::default();
    let mut ledger = Ledger::create(&store, config(100, Some(50)), hash()).unwrap();
    let unpriceable = || Err(ProxyError::CostUnknown("x".into()));
    let mut outside = call(unpriceable());
    outside.path = "/v1/payouts".into();

    // Cap before per-call, per-call before price, price before allowlist, and so on.
    assert_eq!(reserve(&mut ledger, &store, T0, 60), Err(ProxyError::PerCallLimit));
    reserve(&mut ledger, &store, T0, 50).unwrap();
    reserve(&mut ledger, &store, T0, 50).unwrap();
    assert_eq!(reserve(&mut ledger, &store, T0, 60), Err(ProxyError::PerCallLimit));
    assert!(matches!(reserve(&mut ledger, &store, T0, 1), Err(ProxyError::CapExhausted { .. })));
    assert_eq!(
        ledger.reserve(&store, T0, call(Err(ProxyError::CurrencyNotAllowed))).unwrap(),
        Err(ProxyError::CurrencyNotAllowed)
    );
    assert_eq!(ledger.reserve(&store, T0, call(unpriceable())).unwrap().unwrap_err().kind(), "cost_unknown");
    assert_eq!(ledger.reserve(&store, T0, outside).unwrap().unwrap_err(), ProxyError::EndpointNotAllowed);
    let expired = T0 + 7 * MS_PER_DAY;
    assert_eq!(reserve(&mut ledger, &store, expired, 1), Err(ProxyError::KeyExpired));
    ledger.revoke(&store, T0).unwrap();
    assert_eq!(reserve(&mut ledger, &store, expired, 1), Err(ProxyError::KeyRevoked));
    let mut forged = call(Ok(1));
    forged.secret_hash = SecretHash::of(b"guess");
    assert_eq!(ledger.reserve(&store, T0, forged).unwrap().unwrap_err(), ProxyError::InvalidKey);
}

#[test]
fn denials_are_audited_but_failed_authentication_writes_nothing() {
    let (store, mut ledger) = new_ledger(0);
    let before = (store.key.borrow().clone(), store.audit.borrow().len());
    let mut forged = call(Ok(1));
    forged.secret_hash = SecretHash::of(b"guess");
    assert_eq!(ledger.reserve(&store, T0, forged).unwrap().unwrap_err(), ProxyError::InvalidKey);
    assert_eq!((store.key.borrow().clone(), store.audit.borrow().len()), before);

    reserve(&mut ledger, &store, T0, 1).unwrap_err();
    let audit = store.audit.borrow();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].decision.as_str(), audit[0].outcome, audit[0].status),
        ("cap_exhausted", Outcome::Denied, Some(429))
    );
    assert_eq!(audit[0].agent_run_label.as_deref(), Some("run-1"));
}

#[test]
fn spend_resets_at_utc_midnight() {
    let (store, mut ledger) = new_ledger(1_000);
    let r = reserve(&mut ledger, &store, T0, 1_000).unwrap();
    settle(&mut ledger, &store, T0, &r);
    assert!(reserve(&mut ledger, &store, T0, 1).is_err());
    let midnight = (T0 / MS_PER_DAY + 1) * MS_PER_DAY;
    assert!(reserve(&mut ledger, &store, midnight - 1, 1).is_err(), "still the same UTC day");
    let r = reserve(&mut ledger, &store, midnight, 1_000).unwrap();
    assert_eq!(ledger.state(midnight, 0).reserved, Micros(1_000));
    settle(&mut ledger, &store, midnight, &r);
    assert_eq!(ledger.state(midnight, 0).spent, Micros(1_000));
}

#[test]
fn a_reservation_from_yesterday_settles_into_yesterday() {
    let (store, mut ledger) = new_ledger(1_000);
    let late = (T0 / MS_PER_DAY + 1) * MS_PER_DAY - 10;
    let r = reserve(&mut ledger, &store, late, 600).unwrap();
    let next_day = late + 20;
    assert_eq!(ledger.state(next_day, 0).reserved, Micros::ZERO, "yesterday's hold is not today's");
    settle(&mut ledger, &store, next_day, &r);
    let state = ledger.state(next_day, 0);
    assert_eq!((state.spent, state.reserved), (Micros::ZERO, Micros::ZERO));
    assert!(reserve(&mut ledger, &store, next_day, 1_000).is_ok());
}

#[test]
fn ambiguous_outcomes_keep_the_money_held() {
    let (store, mut ledger) = new_ledger(1_000);
    let r = reserve(&mut ledger, &store, T0, 700).unwrap();
    finish(&mut ledger, &store, T0, r.id, CallResult::Unknown);
    assert_eq!(store.audit.borrow().last().unwrap().outcome, Outcome::Unknown);
    let state = ledger.state(T0, 0);
    assert_eq!((state.spent, state.reserved), (Micros::ZERO, Micros(700)));
    assert!(reserve(&mut ledger, &store, T0, 301).is_err());
    assert_eq!(ledger.in_flight(T0, 60_000), 0, "the vendor call itself is over");
    assert!(store.reload().unwrap().open[&r.id].unknown.is_some());
    assert_eq!(ledger.state(T0, 0).unresolved, 1);
}

#[test]
fn a_repeated_finish_changes_nothing() {
    let (store, mut ledger) = new_ledger(1_000);
    let r = reserve(&mut ledger, &store, T0, 700).unwrap();
    settle(&mut ledger, &store, T0, &r);
    settle(&mut ledger, &store, T0, &r);
    finish(&mut ledger, &store, T0, r.id, CallResult::Released);
    assert_eq!(ledger.state(T0, 0).spent, Micros(700));
    assert_eq!(store.audit.borrow().len(), 1);
}

#[test]
fn settlement_debits_what_the_vendor_reports() {
    let (store, mut ledger) = new_ledger(1_000);
    let r = reserve(&mut ledger, &store, T0, 700).unwrap();
    finish(&mut ledger, &store, T0, r.id, CallResult::Settled { cost: Micros(650) });
    assert_eq!(ledger.state(T0, 0).spent, Micros(650));
    let row = store.audit.borrow().last().unwrap().clone();
    assert_eq!((row.reserved_micros, row.cost_micros, row.vendor_object_id.as_deref()), (700, 650, Some("pi_1")));
    assert_eq!((row.decision.as_str(), row.outcome, row.latency_ms), ("forwarded", Outcome::Settled, Some(4)));
}

#[test]
fn revoke_is_idempotent_and_final() {
    let (store, mut ledger) = new_ledger(1_000);
    assert_eq!(ledger.revoke(&store, T0 + 5).unwrap(), T0 + 5);
    assert_eq!(ledger.revoke(&store, T0 + 9).unwrap(), T0 + 5);
    assert_eq!(reserve(&mut ledger, &store, T0 + 10, 0), Err(ProxyError::KeyRevoked));
    assert_eq!(store.reload().unwrap().key.revoked_at_ms, Some(T0 + 5));
}

#[test]
fn audit_row_ids_are_unique_and_ordered() {
    let (store, mut ledger) = new_ledger(1_000);
    for _ in 0..3 {
        let r = reserve(&mut ledger, &store, T0, 1).unwrap();
        settle(&mut ledger, &store, T0, &r);
        let _ = reserve(&mut ledger, &store, T0, 5_000);
    }
    let ids: Vec<String> = store.audit.borrow().iter().map(|r| r.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
}

fn per_minute(unit: u64, max_units: u64) -> ReserveCall {
    ReserveCall { price: Ok(Quote::PerUnit { unit: Micros(unit), max_units }), ..call(Ok(0)) }
}

#[test]
fn per_unit_quotes_hold_what_the_budget_allows() {
    let (store, mut ledger) = new_ledger(100_000);
    let a = ledger.reserve(&store, T0, per_minute(14_000, 240)).unwrap().unwrap();
    assert_eq!((a.units, a.reservation.amount), (7, Micros(98_000)), "7 whole minutes fit in $0.10");
    let units = ledger.reserve(&store, T0, per_minute(1_000, 240)).unwrap().unwrap().units;
    assert_eq!(units, 2, "the rest of the budget");
    assert!(matches!(
        ledger.reserve(&store, T0, per_minute(1_000, 240)).unwrap(),
        Err(ProxyError::CapExhausted { .. })
    ));

    let (store, mut ledger) = new_ledger(10_000_000);
    let units = ledger.reserve(&store, T0, per_minute(14_000, 240)).unwrap().unwrap().units;
    assert_eq!(units, 240, "bounded by the vendor's maximum");

    let store = MemoryStore::default();
    let mut ledger = Ledger::create(&store, config(10_000_000, Some(50_000)), hash()).unwrap();
    let units = ledger.reserve(&store, T0, per_minute(14_000, 240)).unwrap().unwrap().units;
    assert_eq!(units, 3, "bounded by max_usd_per_call");
    assert_eq!(ledger.reserve(&store, T0, per_minute(60_000, 240)).unwrap().unwrap_err(), ProxyError::PerCallLimit);
}

fn settle_estimate(ledger: &mut Ledger, store: &MemoryStore, now: u64, amount: u64) -> u64 {
    let r = reserve(ledger, store, now, amount).unwrap();
    let call = FinishCall {
        reservation_id: r.id,
        result: CallResult::Settled { cost: r.amount },
        status: Some(201),
        vendor_object_id: Some("SM1".into()),
        latency_ms: 3,
        reconcile_path: Some("/2010-04-01/Accounts/AC1/Messages/SM1.json".into()),
        replay: None,
    };
    ledger.finish(store, now, call).unwrap();
    r.id
}

#[test]
fn reconciliation_moves_spend_from_the_estimate_to_the_real_price() {
    let (store, mut ledger) = new_ledger(100_000);
    let id = settle_estimate(&mut ledger, &store, T0, 14_300);
    assert_eq!(ledger.state(T0, 0).spent, Micros(14_300));
    assert_eq!(ledger.due_reconciliations(T0).len(), 1);
    assert_eq!(store.audit.borrow().last().unwrap().estimated_micros, Some(14_300));

    ledger.reconcile_later(&store, T0 + 1, id, 30_000).unwrap();
    assert!(ledger.due_reconciliations(T0 + 1).is_empty());
    assert_eq!(ledger.next_alarm_at(T0, MS_PER_DAY), Some(T0 + 30_001));
    assert_eq!(store.reload().unwrap().reconciling[&id].attempts, 1, "the backoff is stored");

    ledger.reconcile(&store, T0 + 40_000, id, Micros(8_300)).unwrap();
    let state = ledger.state(T0 + 40_000, 0);
    assert_eq!((state.spent, state.reconciling), (Micros(8_300), 0));
    let row = store.audit.borrow().last().unwrap().clone();
    assert_eq!((row.cost_micros, row.estimated_micros, row.reconciled_at_ms), (8_300, Some(14_300), Some(T0 + 40_000)));
    assert_eq!(row.id, store.audit.borrow()[0].id, "the same audit row, updated");
    ledger.reconcile(&store, T0 + 50_000, id, Micros(1)).unwrap();
    assert_eq!(ledger.state(T0 + 50_000, 0).spent, Micros(8_300), "reconciling twice changes nothing");
}

#[test]
fn a_real_price_above_the_estimate_is_still_debited() {
    let (store, mut ledger) = new_ledger(20_000);
    let id = settle_estimate(&mut ledger, &store, T0, 20_000);
    ledger.reconcile(&store, T0 + 1, id, Micros(26_000)).unwrap();
    let state = ledger.state(T0 + 1, 0);
    assert_eq!(state.spent, Micros(26_000), "over the cap by exactly the difference");
    assert!(reserve(&mut ledger, &store, T0 + 2, 0).is_ok(), "free calls still pass");
    assert!(reserve(&mut ledger, &store, T0 + 2, 1).is_err());
}

#[test]
fn reconciliation_gives_up_after_a_day_and_keeps_the_estimate() {
    let (store, mut ledger) = new_ledger(100_000);
    let id = settle_estimate(&mut ledger, &store, T0, 14_300);
    ledger.reconcile_later(&store, T0 + RECONCILE_GIVE_UP_MS, id, 1).unwrap();
    assert_eq!(ledger.state(T0 + RECONCILE_GIVE_UP_MS, 0).reconciling, 0);
    assert!(store.reconciliations.borrow().is_empty());
}

fn keyed(key: Option<&str>, amount: u64) -> ReserveCall {
    ReserveCall { idempotency_key: key.map(String::from), idempotent: true, ..call(Ok(amount)) }
}

fn admit(ledger: &mut Ledger, store: &MemoryStore, now: u64, call: ReserveCall) -> Result<Admitted, ProxyError> {
    ledger.reserve(store, now, call).unwrap()
}

fn replay_of(key: &str) -> Replay {
    Replay {
        path_and_query: "/v1/payment_intents".into(),
        headers: vec![("idempotency-key".into(), key.into())],
        body: "amount=100&currency=usd".into(),
        settlement: crate::core::cost::Settlement::ResponseAmount,
    }
}

fn end(ledger: &mut Ledger, store: &MemoryStore, now: u64, id: u64, result: CallResult, replay: Option<Replay>) {
    let call = FinishCall {
        reservation_id: id,
        result,
        status: Some(if result == CallResult::Unknown { 500 } else { 200 }),
        vendor_object_id: None,
        latency_ms: 1,
        reconcile_path: None,
        replay,
    };
    ledger.finish(store, now, call).unwrap();
}

#[test]
fn a_settled_key_is_replayed_and_debits_nothing_new() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let first = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    assert_eq!(first.idempotency_key.as_deref(), Some("k1"));
    end(&mut ledger, &store, T0, first.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);

    let again = admit(&mut ledger, &store, T0 + 1, keyed(Some("k1"), 100_000)).unwrap();
    assert!(again.reservation.replay);
    assert_eq!(again.reservation.amount, Micros::ZERO);
    end(&mut ledger, &store, T0 + 1, again.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);
    let state = ledger.state(T0 + 1, 0);
    assert_eq!((state.spent, state.reserved), (Micros(100_000), Micros::ZERO));
    let rows = store.audit.borrow();
    assert_eq!((rows[1].decision.as_str(), rows[1].outcome, rows[1].cost_micros), ("forwarded", Outcome::Replayed, 0));
}

#[test]
fn a_key_in_flight_gets_409_and_a_mismatch_422() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let first = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    assert_eq!(admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)), Err(ProxyError::IdempotencyInFlight));
    let mut other_path = keyed(Some("k1"), 100_000);
    other_path.path = "/v1/payment_intents/pi_1".into();
    other_path.fingerprint = fingerprint_of(&other_path.path, &Ok(100_000));
    ledger.key.config.allowed_endpoints.push("POST /v1/payment_intents/{id}".into());
    assert_eq!(admit(&mut ledger, &store, T0, other_path), Err(ProxyError::IdempotencyMismatch));
    assert_eq!(ledger.state(T0, 0).reserved, Micros(100_000), "refusals hold nothing");
    end(&mut ledger, &store, T0, first.reservation.id, CallResult::Released, None);
    let fresh = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    assert!(!fresh.reservation.replay, "a refused call's key runs afresh");
    assert_eq!(ledger.state(T0, 0).reserved, Micros(100_000));
}

#[test]
fn a_missing_key_is_made_up_from_the_reservation_and_remembered() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let a = admit(&mut ledger, &store, T0, keyed(None, 100_000)).unwrap();
    let key = a.idempotency_key.clone().expect("made up");
    assert!(key.starts_with("kb_") && key.ends_with(&format!("_{}", a.reservation.id)));
    end(&mut ledger, &store, T0, a.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);
    assert!(admit(&mut ledger, &store, T0, keyed(Some(&key), 100_000)).unwrap().reservation.replay);
    let b = admit(&mut ledger, &store, T0, keyed(None, 100_000)).unwrap();
    assert_ne!(b.idempotency_key, Some(key), "each call gets its own");
    let untracked = admit(&mut ledger, &store, T0, call(Ok(1))).unwrap();
    assert_eq!(untracked.idempotency_key, None, "vendors without idempotency get none");
}

#[test]
fn remembered_keys_expire_after_the_vendor_retention() {
    let (store, mut ledger) = new_ledger(10_000_000);
    let a = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    end(&mut ledger, &store, T0, a.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);
    let later = T0 + IDEMPOTENCY_RETENTION_MS;
    let b = admit(&mut ledger, &store, later, keyed(Some("k1"), 100_000)).unwrap();
    assert!(!b.reservation.replay);
    assert_eq!(b.reservation.amount, Micros(100_000));
}

#[test]
fn a_retry_under_the_key_of_an_unknown_call_takes_over_its_hold() {
    let (store, mut ledger) = new_ledger(150_000);
    let a = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    end(&mut ledger, &store, T0, a.reservation.id, CallResult::Unknown, Some(replay_of("k1")));
    assert_eq!(ledger.state(T0, 0).unresolved, 1);
    // The cap would refuse another $1, but the retry holds nothing new.
    let retry = admit(&mut ledger, &store, T0 + 5, keyed(Some("k1"), 100_000)).unwrap();
    assert_eq!(retry.reservation.id, a.reservation.id);
    assert!(ledger.due_replays(T0 + 10).is_empty(), "the alarm leaves it to the retry");
    end(&mut ledger, &store, T0 + 6, retry.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);
    let state = ledger.state(T0 + 6, 0);
    assert_eq!((state.spent, state.reserved, state.unresolved), (Micros(100_000), Micros::ZERO, 0));
    assert!(admit(&mut ledger, &store, T0 + 7, keyed(Some("k1"), 100_000)).unwrap().reservation.replay);
}

#[test]
fn the_alarm_resolves_unknown_calls_by_replay() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let a = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    let b = admit(&mut ledger, &store, T0, keyed(Some("k2"), 200_000)).unwrap();
    end(&mut ledger, &store, T0, a.reservation.id, CallResult::Unknown, Some(replay_of("k1")));
    end(&mut ledger, &store, T0, b.reservation.id, CallResult::Unknown, Some(replay_of("k2")));
    let due = ledger.due_replays(T0);
    assert_eq!(due, vec![a.reservation.id, b.reservation.id]);
    assert_eq!(store.get_replay(due[0]).unwrap(), Some(replay_of("k1")), "kept apart from the ledger");

    ledger
        .resolve(
            &store,
            T0 + 10,
            a.reservation.id,
            CallResult::Settled { cost: Micros(90_000) },
            Some(200),
            Some("pi_9".into()),
        )
        .unwrap();
    ledger.resolve_later(&store, T0 + 10, b.reservation.id, 1_000).unwrap();
    assert_eq!(ledger.due_replays(T0 + 10).len(), 0);
    assert_eq!(ledger.next_alarm_at(T0, MS_PER_DAY), Some(T0 + 1_010));
    ledger.resolve(&store, T0 + 2_000, b.reservation.id, CallResult::Released, Some(402), None).unwrap();

    let state = ledger.state(T0 + 2_000, 0);
    assert_eq!((state.spent, state.reserved, state.unresolved), (Micros(90_000), Micros::ZERO, 0));
    let rows = store.audit.borrow();
    let resolved: Vec<_> = rows.iter().filter(|r| r.reconciled_at_ms.is_some()).collect();
    assert_eq!(resolved.len(), 2);
    assert_eq!(
        (resolved[0].outcome, resolved[0].cost_micros, resolved[0].vendor_object_id.as_deref()),
        (Outcome::Settled, 90_000, Some("pi_9"))
    );
    assert_eq!(
        resolved[0].id,
        rows.iter().find(|r| r.outcome == Outcome::Unknown).unwrap().id,
        "the unknown row is updated in place"
    );
    assert_eq!((resolved[1].outcome, resolved[1].status), (Outcome::Released, Some(402)));
    drop(rows);
    assert!(admit(&mut ledger, &store, T0 + 3_000, keyed(Some("k1"), 100_000)).unwrap().reservation.replay);
}

#[test]
fn replays_stop_at_the_vendor_retention_and_the_hold_stays() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let a = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    end(&mut ledger, &store, T0, a.reservation.id, CallResult::Unknown, Some(replay_of("k1")));
    ledger.resolve_later(&store, T0 + 1, a.reservation.id, IDEMPOTENCY_RETENTION_MS).unwrap();
    assert!(ledger.due_replays(u64::MAX).is_empty());
    let state = ledger.state(T0 + 2, 0);
    assert_eq!((state.reserved, state.unresolved), (Micros(100_000), 1));
}

#[test]
fn calls_whose_worker_never_reported_back_are_swept_to_unknown_not_released() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let a = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    let b = admit(&mut ledger, &store, T0 + 50_000, keyed(Some("k2"), 100_000)).unwrap();
    assert_eq!(ledger.next_alarm_at(T0, 60_000), Some(T0 + 60_000));
    assert_eq!(ledger.sweep_stale(&store, T0 + 59_999, 60_000).unwrap(), 0);
    assert_eq!(ledger.sweep_stale(&store, T0 + 60_000, 60_000).unwrap(), 1);
    let state = ledger.state(T0 + 60_000, 0);
    assert_eq!((state.reserved, state.unresolved), (Micros(200_000), 1), "the money stays held");
    assert_eq!(ledger.in_flight(T0 + 60_000, 60_000), 1, "b, admitted 10 s ago");
    assert_eq!(ledger.in_flight(T0 + 110_000, 60_000), 0, "past its cut-off, a lost call is not waited for");
    let row = store.audit.borrow().last().unwrap().clone();
    assert_eq!((row.outcome, row.status, row.reserved_micros), (Outcome::Unknown, None, 100_000));
    // A late report from the lost Worker changes nothing; a retry under the key resolves it.
    end(&mut ledger, &store, T0 + 61_000, a.reservation.id, CallResult::Released, None);
    assert_eq!(ledger.state(T0 + 61_000, 0).unresolved, 1);
    let retry = admit(&mut ledger, &store, T0 + 62_000, keyed(Some("k1"), 100_000)).unwrap();
    end(&mut ledger, &store, T0 + 62_000, retry.reservation.id, CallResult::Released, None);
    end(&mut ledger, &store, T0 + 62_000, b.reservation.id, CallResult::Released, None);
    let state = ledger.state(T0 + 62_000, 0);
    assert_eq!((state.reserved, state.unresolved, state.spent), (Micros::ZERO, 0, Micros::ZERO));
}

#[test]
fn refresh_extends_an_active_key_within_thirty_days() {
    let (store, mut ledger) = new_ledger(1_000);
    assert_eq!(ledger.refresh(&store, T0 + 1_000, 7_200).unwrap(), Ok(()));
    assert_eq!(ledger.state(T0, 0).config.expires_at_ms, T0 + 1_000 + 7_200_000);
    assert_eq!(store.reload().unwrap().key.config.expires_at_ms, T0 + 1_000 + 7_200_000, "stored");
    let too_far = ledger.refresh(&store, T0 + 2_000, 30 * 86_400).unwrap().unwrap_err();
    assert_eq!(too_far.kind(), "invalid_request");
    ledger.revoke(&store, T0 + 2_000).unwrap();
    assert_eq!(ledger.refresh(&store, T0 + 3_000, 60).unwrap().unwrap_err().status(), 409);
    let (store, mut ledger) = new_ledger(1_000);
    let expired = ledger.state(T0, 0).config.expires_at_ms;
    assert_eq!(ledger.refresh(&store, expired, 60).unwrap().unwrap_err().status(), 409);
}

#[test]
fn connected_accounts_and_expand_follow_the_key() {
    let store = MemoryStore::default();
    let pinned = KeyConfig { stripe_account: Some("acct_1".into()), ..config(1_000, None) };
    let mut ledger = Ledger::create(&store, pinned, hash()).unwrap();
    let with = |account: Option<&str>, expand: bool| ReserveCall {
        stripe_account: account.map(String::from),
        expand,
        ..call(Ok(1))
    };
    assert!(admit(&mut ledger, &store, T0, with(Some("acct_1"), false)).is_ok());
    assert!(admit(&mut ledger, &store, T0, with(None, false)).is_ok());
    assert_eq!(admit(&mut ledger, &store, T0, with(Some("acct_2"), false)).unwrap_err().kind(), "header_not_allowed");
    assert_eq!(admit(&mut ledger, &store, T0, with(None, true)).unwrap_err().kind(), "parameter_not_allowed");
    let (store, mut ledger) = new_ledger(1_000);
    assert_eq!(admit(&mut ledger, &store, T0, with(Some("acct_1"), false)).unwrap_err().status(), 403);
    ledger.key.config.allow_expand = true;
    assert!(admit(&mut ledger, &store, T0, with(None, true)).is_ok());
}

/// A retry under `key` whose body differs from the first call's: another amount.
fn keyed_other_body(key: &str, amount: u64) -> ReserveCall {
    ReserveCall { fingerprint: format!("other body {amount}"), ..keyed(Some(key), amount) }
}

fn unknown_with_replay(ledger: &mut Ledger, store: &MemoryStore, now: u64, key: &str, amount: u64) -> Admitted {
    let a = admit(ledger, store, now, keyed(Some(key), amount)).unwrap();
    end(ledger, store, now, a.reservation.id, CallResult::Unknown, Some(replay_of(key)));
    a
}

#[test]
fn a_retry_with_another_body_is_refused_whatever_became_of_the_first() {
    let (store, mut ledger) = new_ledger(5_000_000);
    // Unknown: $2 held. A retry for $40 (or in EUR) under the same key is not that call.
    unknown_with_replay(&mut ledger, &store, T0, "k1", 2_000_000);
    assert_eq!(
        admit(&mut ledger, &store, T0 + 1, keyed_other_body("k1", 40_000_000)),
        Err(ProxyError::IdempotencyMismatch)
    );
    let eur = ReserveCall { fingerprint: "currency=eur".into(), ..keyed(Some("k1"), 2_000_000) };
    assert_eq!(admit(&mut ledger, &store, T0 + 1, eur), Err(ProxyError::IdempotencyMismatch));
    assert_eq!(ledger.state(T0 + 1, 0).reserved, Micros(2_000_000), "the hold is untouched");
    // Settled and in flight alike.
    let s = admit(&mut ledger, &store, T0 + 2, keyed(Some("k2"), 100_000)).unwrap();
    assert_eq!(admit(&mut ledger, &store, T0 + 2, keyed_other_body("k2", 1)), Err(ProxyError::IdempotencyMismatch));
    end(&mut ledger, &store, T0 + 2, s.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);
    assert_eq!(admit(&mut ledger, &store, T0 + 3, keyed_other_body("k2", 1)), Err(ProxyError::IdempotencyMismatch));
    let rows = store.audit.borrow();
    assert_eq!(rows.iter().filter(|r| r.decision == "idempotency_mismatch").count(), 4, "each refusal audited");
}

#[test]
fn a_retry_of_an_unknown_call_is_priced_and_checked_like_any_call() {
    let (store, mut ledger) = new_ledger(2_500_000);
    unknown_with_replay(&mut ledger, &store, T0, "k1", 2_000_000);
    // The same call, but the price now fails a check (a table changed): refused, hold kept.
    let refused = ReserveCall { price: Err(ProxyError::CurrencyNotAllowed), ..keyed(Some("k1"), 2_000_000) };
    assert_eq!(admit(&mut ledger, &store, T0 + 1, refused), Err(ProxyError::CurrencyNotAllowed));
    // Its own hold counts as available; a price past it must fit the rest of the cap.
    let grown = ReserveCall { price: Ok(Quote::Fixed { amount: Micros(3_000_000) }), ..keyed(Some("k1"), 2_000_000) };
    assert!(matches!(admit(&mut ledger, &store, T0 + 2, grown), Err(ProxyError::CapExhausted { .. })));
    let fits = ReserveCall { price: Ok(Quote::Fixed { amount: Micros(2_400_000) }), ..keyed(Some("k1"), 2_000_000) };
    let retry = admit(&mut ledger, &store, T0 + 3, fits).unwrap();
    assert_eq!((retry.reservation.amount, retry.attempt), (Micros(2_400_000), Attempt::Repeat));
    assert_eq!(ledger.state(T0 + 3, 0).reserved, Micros(2_400_000));
    assert!(ledger.state(T0 + 3, 0).reserved <= Micros(2_500_000));
}

#[test]
fn keys_in_the_made_up_namespace_are_accepted_only_back_from_this_vault_key() {
    let (store, mut ledger) = new_ledger(10_000_000);
    let other = format!("kb_{}_1", "f".repeat(64));
    assert_eq!(admit(&mut ledger, &store, T0, keyed(Some(&other), 100_000)).unwrap_err().kind(), "invalid_request");
    let own_unmade = format!("kb_{ID}_99");
    assert_eq!(
        admit(&mut ledger, &store, T0, keyed(Some(&own_unmade), 100_000)).unwrap_err().kind(),
        "invalid_request"
    );
    let made = admit(&mut ledger, &store, T0, keyed(None, 100_000)).unwrap();
    let key = made.idempotency_key.clone().unwrap();
    end(&mut ledger, &store, T0, made.reservation.id, CallResult::Settled { cost: Micros(100_000) }, None);
    assert!(admit(&mut ledger, &store, T0 + 1, keyed(Some(&key), 100_000)).unwrap().reservation.replay);
}

#[test]
fn a_client_key_is_not_forwarded_to_a_vendor_without_idempotency() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let twilio_like = ReserveCall { idempotency_key: Some("client-key".into()), idempotent: false, ..call(Ok(1)) };
    assert_eq!(admit(&mut ledger, &store, T0, twilio_like).unwrap().idempotency_key, None);
}

#[test]
fn revoke_ends_replays_and_keeps_the_holds() {
    let (store, mut ledger) = new_ledger(1_000_000);
    unknown_with_replay(&mut ledger, &store, T0, "k1", 100_000);
    assert_eq!(ledger.due_replays(T0).len(), 1);
    ledger.revoke(&store, T0 + 1).unwrap();
    assert!(ledger.due_replays(T0 + 1).is_empty());
    assert_eq!(ledger.next_alarm_at(T0 + 1, MS_PER_DAY), None, "nothing left to wake for");
    assert!(store.replays.borrow().is_empty(), "the request body is gone");
    let state = ledger.state(T0 + 1, 0);
    assert_eq!((state.reserved, state.unresolved), (Micros(100_000), 1));
    // A call still in flight at the revoke that ends unknown keeps no replay either.
    let (store, mut ledger) = new_ledger(1_000_000);
    let a = admit(&mut ledger, &store, T0, keyed(Some("k1"), 100_000)).unwrap();
    ledger.revoke(&store, T0 + 1).unwrap();
    end(&mut ledger, &store, T0 + 2, a.reservation.id, CallResult::Unknown, Some(replay_of("k1")));
    assert!(ledger.due_replays(T0 + 2).is_empty() && store.replays.borrow().is_empty());
    assert_eq!(store.reload().unwrap().state(T0 + 2, 0).unresolved, 1);
}

#[test]
fn expiry_ends_replays() {
    let (store, mut ledger) = new_ledger(1_000_000);
    ledger.key.config.expires_at_ms = T0 + 3_600_000;
    unknown_with_replay(&mut ledger, &store, T0, "k1", 100_000);
    let expiry = ledger.key.config.expires_at_ms;
    assert_eq!(ledger.due_replays(expiry - 1).len(), 1);
    assert!(ledger.due_replays(expiry).is_empty());
    assert!(!ledger.may_replay(ledger.open.keys().copied().next().unwrap(), expiry));
    assert_eq!(ledger.next_alarm_at(expiry, MS_PER_DAY), None);
}

#[test]
fn the_replay_window_counts_from_the_keys_first_use() {
    let (store, mut ledger) = new_ledger(1_000_000);
    let a = unknown_with_replay(&mut ledger, &store, T0, "k1", 100_000);
    // The client retries 22 h later; that retry ends unknown too.
    let later = T0 + 22 * 3_600_000;
    let retry = admit(&mut ledger, &store, later, keyed(Some("k1"), 100_000)).unwrap();
    assert_eq!(retry.reservation.id, a.reservation.id);
    end(&mut ledger, &store, later, retry.reservation.id, CallResult::Unknown, Some(replay_of("k1")));
    assert_eq!(ledger.due_replays(later), vec![a.reservation.id]);
    assert!(ledger.due_replays(T0 + REPLAY_WINDOW_MS).is_empty(), "not 23 h after the retry, but after the first use");
    ledger.resolve_later(&store, later, a.reservation.id, 2 * 3_600_000).unwrap();
    assert!(store.replays.borrow().is_empty(), "a replay past the window is dropped");
    assert_eq!(ledger.state(later, 0).unresolved, 1);
}

#[test]
fn refused_calls_past_the_threshold_are_counted_on_one_row() {
    let (store, mut ledger) = new_ledger(1_000);
    for i in 0..(DENIED_ROWS_PER_DAY + 50) {
        let price = if i % 2 == 0 { Ok(5_000) } else { Err(ProxyError::CurrencyNotAllowed) };
        assert!(ledger.reserve(&store, T0 + u64::from(i), call(price)).unwrap().is_err());
    }
    let rows = store.audit.borrow();
    let distinct: std::collections::BTreeMap<&str, &AuditRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    assert_eq!(distinct.len(), DENIED_ROWS_PER_DAY as usize + 1, "one row each, then one that counts the rest");
    let coalesced = rows.last().unwrap();
    assert_eq!(coalesced.id, format!("{ID}-denied-{}", crate::core::clock::utc_day(T0)));
    assert_eq!((coalesced.count, coalesced.outcome), (50, Outcome::Denied));
    assert_eq!(coalesced.decision, "cap_exhausted,currency_not_allowed");
    assert_eq!((coalesced.ts_ms, coalesced.last_ts_ms), (T0 + 100, Some(T0 + 149)));
    drop(rows);
    assert_eq!(store.reload().unwrap().denials, ledger.denials, "stored");
    // The next day starts afresh.
    assert!(ledger.reserve(&store, T0 + MS_PER_DAY, call(Ok(5_000))).unwrap().is_err());
    assert_eq!(store.audit.borrow().last().unwrap().count, 1);
}

#[test]
fn refused_calls_on_a_revoked_key_are_counted_not_stored_one_by_one() {
    let (store, mut ledger) = new_ledger(1_000);
    ledger.revoke(&store, T0).unwrap();
    for i in 0..1_000 {
        assert_eq!(reserve(&mut ledger, &store, T0 + i, 1), Err(ProxyError::KeyRevoked));
    }
    let ids: std::collections::BTreeSet<String> = store.audit.borrow().iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(store.audit.borrow().last().unwrap().count, 1_000);
}

#[test]
fn an_over_long_idempotency_key_is_refused_and_stored_cut_with_a_flag() {
    let (store, mut ledger) = new_ledger(1_000);
    let long = "k".repeat(64 * 1024);
    assert_eq!(admit(&mut ledger, &store, T0, keyed(Some(&long), 1)).unwrap_err().kind(), "invalid_request");
    let row = store.audit.borrow().last().unwrap().clone();
    assert_eq!(row.idempotency_key.map(|k| k.len()), Some(MAX_IDEMPOTENCY_KEY_LEN));
    assert!(row.idempotency_key_truncated);
    assert!(store.idempotency.borrow().is_empty(), "nothing remembered");
}

/// xorshift64*: deterministic, dependency-free randomness for the property test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn spent_plus_reserved_never_exceeds_the_cap_over_random_operations() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let cap = rng.below(5_000_000);
        let (store, mut ledger) = new_ledger(cap);
        let mut now = T0;
        let mut open: Vec<Reservation> = Vec::new();
        // Idempotency keys used, with the amount of their first call.
        let mut keys: Vec<(String, u64)> = Vec::new();
        let mut over_cap = Micros::ZERO; // what vendors reported above the holds
        for step in 0..300 {
            let day = crate::core::clock::utc_day(now);
            now += rng.below(600_000); // spans day boundaries and, eventually, expiry
            if crate::core::clock::utc_day(now) != day {
                over_cap = Micros::ZERO; // a new day's spend starts from zero
            }
            match rng.below(12) {
                0..=3 => {
                    if let Ok(r) = reserve(&mut ledger, &store, now, rng.below(1_000_000)) {
                        open.push(r);
                    }
                }
                4 => {
                    // A keyed call, a retry of one, or a retry with another body.
                    let call = match (keys.is_empty(), rng.below(3)) {
                        (false, 0) => {
                            let (key, amount) = keys[rng.below(keys.len() as u64) as usize].clone();
                            keyed(Some(&key), amount)
                        }
                        (false, 1) => {
                            let (key, _) = keys[rng.below(keys.len() as u64) as usize].clone();
                            keyed_other_body(&key, rng.below(10_000_000))
                        }
                        _ => {
                            let amount = rng.below(1_000_000);
                            keys.push((format!("k{step}"), amount));
                            keyed(Some(&format!("k{step}")), amount)
                        }
                    };
                    // Bound: the key was first used for a call this ledger let through, within
                    // the retention. Another body under a bound key must never be admitted.
                    let bound = call.idempotency_key.as_deref().and_then(|k| store.get_idempotency(k).unwrap());
                    let bound = bound.is_some_and(|r| now < r.created_ms + IDEMPOTENCY_RETENTION_MS);
                    let other_body = bound && !call.fingerprint.starts_with("POST");
                    match ledger.reserve(&store, now, call).unwrap() {
                        Ok(a) => {
                            assert!(!other_body, "seed {seed}: a retry with another body was admitted");
                            if !open.iter().any(|r| r.id == a.reservation.id) {
                                open.push(a.reservation);
                            }
                        }
                        Err(e) if other_body => assert!(
                            matches!(
                                e,
                                ProxyError::IdempotencyMismatch | ProxyError::KeyRevoked | ProxyError::KeyExpired
                            ),
                            "seed {seed}: {e:?}"
                        ),
                        Err(_) => {}
                    }
                }
                5..=7 if !open.is_empty() => {
                    let r = open.swap_remove(rng.below(open.len() as u64) as usize);
                    // Vendors may report less than was held, or more (a price that moved).
                    let cost = Micros(rng.below(r.amount.0 * 2 + 1));
                    if cost > r.amount && !r.replay {
                        over_cap = Micros(over_cap.0 + cost.0 - r.amount.0);
                    }
                    finish(&mut ledger, &store, now, r.id, CallResult::Settled { cost });
                }
                8 if !open.is_empty() => {
                    let r = open.swap_remove(rng.below(open.len() as u64) as usize);
                    let result = if rng.below(2) == 0 { CallResult::Released } else { CallResult::Unknown };
                    finish(&mut ledger, &store, now, r.id, result);
                }
                9 => {
                    for id in ledger.due_replays(now) {
                        let held = ledger.held(id);
                        let result = match rng.below(3) {
                            0 => CallResult::Settled { cost: held },
                            1 => CallResult::Released,
                            _ => CallResult::Unknown,
                        };
                        if result == CallResult::Unknown {
                            ledger.resolve_later(&store, now, id, rng.below(3_600_000)).unwrap();
                        } else {
                            ledger.resolve(&store, now, id, result, Some(200), None).unwrap();
                        }
                    }
                }
                _ => {
                    if rng.below(50) == 0 {
                        ledger.revoke(&store, now).unwrap();
                        assert!(ledger.due_replays(now).is_empty(), "seed {seed}: replays after a revoke");
                    }
                }
            }
            let state = ledger.state(now, 0);
            let committed = state.spent.0 + state.reserved.0;
            assert!(
                committed <= cap + over_cap.0,
                "seed {seed}: spent {} + reserved {} > cap {cap} + reported over holds {}",
                state.spent.0,
                state.reserved.0,
                over_cap.0
            );

            let mut reloaded = store.reload().unwrap();
            assert_eq!(reloaded.state(now, 0), state, "seed {seed}: the store lags the ledger");
            assert_eq!(reloaded.open, ledger.open);
        }
    }
}
