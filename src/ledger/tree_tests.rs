//! Unit tests of key trees: issuers, children, and every limit above a key, exact.

use super::tree::{IssuerRecord, KeyTree, TreeStore};
use super::*;
use crate::core::clock::MS_PER_DAY;
use crate::core::lineage::parse_new_issuer;
use crate::core::vendor::Vendor;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

const T0: u64 = 1_795_838_767_000; // 2026-11-28T04:06:07Z
const OBJECT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A [`TreeStore`] in memory: one [`MemoryStore`] per key.
#[derive(Default)]
struct MemoryTree {
    keys: RefCell<BTreeMap<String, Rc<MemoryStore>>>,
    issuer: RefCell<Option<IssuerRecord>>,
    members: Cell<u64>,
}

impl TreeStore for MemoryTree {
    type Error = std::convert::Infallible;
    type Key = Rc<MemoryStore>;
    fn key(&self, key_id: &str) -> Rc<MemoryStore> {
        self.keys.borrow_mut().entry(key_id.to_string()).or_default().clone()
    }
    fn load_key(&self, key_id: &str) -> Result<Option<Ledger>, Self::Error> {
        Ok(self.keys.borrow().get(key_id).and_then(|s| s.reload()))
    }
    fn put_issuer(&self, issuer: &IssuerRecord) -> Result<(), Self::Error> {
        *self.issuer.borrow_mut() = Some(issuer.clone());
        Ok(())
    }
    fn put_members(&self, members: u64) -> Result<(), Self::Error> {
        self.members.set(members);
        Ok(())
    }
}

impl MemoryTree {
    /// The tree a fresh object would load from this store.
    fn reload(&self) -> KeyTree {
        let ledgers: Vec<Ledger> = self.keys.borrow().values().filter_map(|s| s.reload()).collect();
        KeyTree::load(self.issuer.borrow().clone(), self.members.get(), ledgers)
    }
}

fn secret(n: u8) -> SecretHash {
    SecretHash::of(&[n])
}

fn root_config(cap_usd: u64) -> KeyConfig {
    KeyConfig {
        key_id: OBJECT.into(),
        vendor: Vendor::Stripe,
        daily_cap: Micros(cap_usd * 1_000_000),
        max_per_call: None,
        allowed_endpoints: vec!["POST /v1/payment_intents".into()],
        created_at_ms: T0,
        expires_at_ms: T0 + MS_PER_DAY,
        agent_run_label: Some("parent".into()),
        stripe_account: None,
        allow_expand: false,
        issuer_id: None,
        parent_key_id: None,
        alert_thresholds: vec![],
    }
}

fn charge(key_secret: u8, usd: u64) -> ReserveCall {
    ReserveCall {
        vendor: Vendor::Stripe,
        secret_hash: secret(key_secret),
        method: "POST".into(),
        path: "/v1/payment_intents".into(),
        price: Ok(crate::core::cost::Quote::Fixed { amount: Micros(usd * 1_000_000) }),
        idempotency_key: None,
        idempotent: false,
        fingerprint: String::new(),
        stripe_account: None,
        expand: false,
        refused: None,
    }
}

fn child(
    tree: &mut KeyTree,
    store: &MemoryTree,
    parent: &str,
    parent_secret: u8,
    n: u8,
    body: &str,
) -> Result<KeyConfig, ProxyError> {
    tree.mint_child(store, T0, parent, (Vendor::Stripe, &secret(parent_secret)), body.as_bytes(), secret(n)).unwrap()
}

fn reserve(tree: &mut KeyTree, store: &MemoryTree, key: &str, key_secret: u8, usd: u64) -> Result<u64, ProxyError> {
    tree.reserve(store, T0, key, charge(key_secret, usd)).unwrap().map(|(a, _)| a.reservation.id)
}

fn settle(tree: &mut KeyTree, store: &MemoryTree, key: &str, id: u64, usd: u64) {
    let call = protocol::FinishCall {
        reservation_id: id,
        result: CallResult::Settled { cost: Micros(usd * 1_000_000) },
        status: Some(200),
        vendor_object_id: None,
        latency_ms: 1,
        reconcile_path: None,
        replay: None,
    };
    tree.finish(store, T0, key, call).unwrap();
}

#[test]
fn children_spend_against_the_parent_cap_exactly() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(60), secret(0)).unwrap().unwrap();
    let kids: Vec<String> =
        (1..=10).map(|n| child(&mut tree, &store, OBJECT, 0, n, r#"{"daily_usd_cap":10}"#).unwrap().key_id).collect();
    assert_eq!(kids[0], format!("{OBJECT}-1"));
    // 10 children of $10 each under $60: exactly 60 one-dollar calls pass, in any order.
    let mut admitted = 0;
    for round in 0..10 {
        for (i, kid) in kids.iter().enumerate() {
            match reserve(&mut tree, &store, kid, i as u8 + 1, 1) {
                Ok(_) => admitted += 1,
                Err(e) => {
                    assert!(round >= 6 || e.cap_scope() == Some(CapScope::Parent), "{round} {e:?}");
                }
            }
        }
    }
    assert_eq!(admitted, 60);
    // The parent's own call is refused too: its cap counts its descendants.
    assert_eq!(reserve(&mut tree, &store, OBJECT, 0, 1).unwrap_err().cap_scope(), Some(CapScope::Key));
    let state = tree.state(&store, T0, OBJECT, 0).unwrap().unwrap();
    assert_eq!((state.descendants, state.remaining()), (Micros(60_000_000), Micros::ZERO));
    // Reloaded from the store, the same limits hold.
    let mut reloaded = store.reload();
    assert!(reserve(&mut reloaded, &store, &kids[0], 1, 1).is_err());
}

#[test]
fn a_child_cannot_mint_beyond_its_parent() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(5), secret(0)).unwrap().unwrap();
    let c = child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":5}"#).unwrap();
    // A leaked child key mints a grandchild with the biggest cap it may: still bounded by $5.
    assert_eq!(
        child(&mut tree, &store, &c.key_id, 1, 2, r#"{"daily_usd_cap":6}"#).unwrap_err().kind(),
        "invalid_request"
    );
    let g = child(&mut tree, &store, &c.key_id, 1, 2, r#"{"daily_usd_cap":5}"#).unwrap();
    assert!(reserve(&mut tree, &store, &g.key_id, 2, 5).is_ok());
    assert_eq!(reserve(&mut tree, &store, &c.key_id, 1, 1).unwrap_err().cap_scope(), Some(CapScope::Key));
    // Wrong secrets, and nesting past the limit, are refused.
    assert_eq!(
        child(&mut tree, &store, &c.key_id, 9, 3, r#"{"daily_usd_cap":1}"#).unwrap_err(),
        ProxyError::InvalidKey
    );
    let d3 = child(&mut tree, &store, &g.key_id, 2, 3, r#"{"daily_usd_cap":1}"#).unwrap();
    let err = child(&mut tree, &store, &d3.key_id, 3, 4, r#"{"daily_usd_cap":1}"#).unwrap_err();
    assert!(err.message().contains("nest"), "{err:?}");
}

#[test]
fn revoking_a_parent_revokes_its_descendants_and_nothing_else() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(50), secret(0)).unwrap().unwrap();
    let a = child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    let b = child(&mut tree, &store, OBJECT, 0, 2, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    let a1 = child(&mut tree, &store, &a, 1, 3, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    let mut revoked = tree.revoke(&store, T0, std::slice::from_ref(&a)).unwrap();
    revoked.sort();
    assert_eq!(revoked, vec![a.clone(), a1.clone()]);
    assert_eq!(reserve(&mut tree, &store, &a1, 3, 1), Err(ProxyError::KeyRevoked));
    assert!(reserve(&mut tree, &store, &b, 2, 1).is_ok());
    assert_eq!(child(&mut tree, &store, &a, 1, 4, r#"{"daily_usd_cap":1}"#).unwrap_err(), ProxyError::KeyRevoked);
    assert!(store.reload().ledger(&a1).is_some_and(Ledger::is_revoked), "the cascade is stored");
}

#[test]
fn an_issuer_budget_holds_across_its_keys_and_its_ceiling_binds() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    let config = parse_new_issuer(
        br#"{"name":"billing","daily_usd_budget":25,"vendors":["stripe"],"allowed_endpoints":["POST /v1/payment_intents"],"max_key_usd_cap":10}"#,
        OBJECT.into(),
        T0,
    )
    .unwrap();
    tree.create_issuer(&store, config, secret(100)).unwrap().unwrap();
    assert!(tree.authenticates_issuer(&secret(100)));
    assert!(!tree.authenticates_issuer(&secret(101)));
    let body =
        r#"{"vendor":"stripe","daily_usd_cap":10,"allowed_endpoints":["POST /v1/payment_intents"],"expires_in":"2d"}"#;
    let keys: Vec<String> =
        (1..=4).map(|n| tree.issue(&store, T0, body.as_bytes(), secret(n)).unwrap().unwrap().key_id).collect();
    let too_big = r#"{"vendor":"stripe","daily_usd_cap":11,"allowed_endpoints":["POST /v1/payment_intents"]}"#;
    assert!(tree
        .issue(&store, T0, too_big.as_bytes(), secret(9))
        .unwrap()
        .unwrap_err()
        .message()
        .contains("daily_usd_cap"));
    let mut admitted = 0;
    let mut last_refusal = None;
    for _ in 0..10 {
        for (i, k) in keys.iter().enumerate() {
            match reserve(&mut tree, &store, k, i as u8 + 1, 1) {
                Ok(id) => {
                    admitted += 1;
                    settle(&mut tree, &store, k, id, 1);
                }
                Err(e) => last_refusal = Some(e),
            }
        }
    }
    assert_eq!(admitted, 25);
    assert!(matches!(last_refusal, Some(ProxyError::BudgetExhausted { .. })), "{last_refusal:?}");
    let state = tree.issuer_state(T0).unwrap();
    assert_eq!((state.spent, state.held, state.live_keys), (Micros(25_000_000), Micros::ZERO, 4));
    // The next UTC day starts from zero.
    assert!(tree.reserve(&store, T0 + MS_PER_DAY, &keys[0], charge(1, 1)).unwrap().is_ok());
    // Revoking the issuer revokes every key, and nothing more can be issued.
    assert_eq!(tree.revoke_issuer(&store, T0).unwrap().len(), 4);
    assert!(!tree.authenticates_issuer(&secret(100)));
    assert_eq!(reserve(&mut tree, &store, &keys[1], 2, 1), Err(ProxyError::KeyRevoked));
    assert_eq!(tree.issue(&store, T0, body.as_bytes(), secret(9)).unwrap().unwrap_err(), ProxyError::Unauthorized);
}

#[test]
fn dead_keys_leave_memory_and_come_back_when_asked_about() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(50), secret(0)).unwrap().unwrap();
    let spent = child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    let idle = child(&mut tree, &store, OBJECT, 0, 2, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    let id = reserve(&mut tree, &store, &spent, 1, 3).unwrap();
    settle(&mut tree, &store, &spent, id, 3);
    tree.revoke(&store, T0, &[spent.clone(), idle.clone()]).unwrap();
    // The idle key goes; the one that spent today still counts against the parent, so stays.
    assert_eq!(tree.evict(T0), 1);
    assert!(tree.ledger(&idle).is_none() && tree.ledger(&spent).is_some());
    assert_eq!(tree.remaining(OBJECT, T0), Micros(47_000_000));
    // Asked about, the evicted key is read back and answers as before.
    let state = tree.state(&store, T0, &idle, 0).unwrap().unwrap();
    assert_eq!(state.status(T0), crate::core::keys::KeyStatus::Revoked);
    assert_eq!(reserve(&mut tree, &store, &idle, 2, 1), Err(ProxyError::KeyRevoked));
    // Just past 00:00 UTC nothing of theirs counts: both may go; the live root stays.
    assert_eq!(tree.evict(T0 + 20 * 3_600_000), 2);
    assert!(tree.ledger(OBJECT).is_some());
}

#[test]
fn a_tree_holds_a_bounded_number_of_live_keys() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(50), secret(0)).unwrap().unwrap();
    for n in 1..super::tree::MAX_LIVE_KEYS {
        child(&mut tree, &store, OBJECT, 0, (n % 200) as u8, r#"{"daily_usd_cap":1}"#).unwrap();
    }
    let err = child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":1}"#).unwrap_err();
    assert_eq!(err.kind(), "conflict", "{err:?}");
    // Revoking frees room.
    tree.revoke(&store, T0, &[format!("{OBJECT}-1")]).unwrap();
    assert!(child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":1}"#).is_ok());
}

#[test]
fn a_keys_chain_and_subtree_spend_are_what_its_alerts_count() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(60), secret(0)).unwrap().unwrap();
    let kid = child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":10}"#).unwrap().key_id;
    let grandkid = child(&mut tree, &store, &kid, 1, 2, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    assert_eq!(tree.chain(&grandkid), vec![grandkid.clone(), kid.clone(), OBJECT.to_string()]);
    let held = reserve(&mut tree, &store, &grandkid, 2, 3).unwrap();
    // Held money is not spent: no threshold is crossed by a hold.
    assert_eq!(tree.subtree_spent(OBJECT, T0), Micros::ZERO);
    settle(&mut tree, &store, &grandkid, held, 3);
    let own = reserve(&mut tree, &store, OBJECT, 0, 2).unwrap();
    settle(&mut tree, &store, OBJECT, own, 2);
    assert_eq!(tree.subtree_spent(OBJECT, T0), Micros(5_000_000));
    assert_eq!(tree.subtree_spent(&kid, T0), Micros(3_000_000));
    assert_eq!(tree.subtree_spent(&grandkid, T0), Micros(3_000_000));
    // A new day starts from nothing.
    assert_eq!(tree.subtree_spent(OBJECT, T0 + MS_PER_DAY), Micros::ZERO);
}

#[test]
fn the_remaining_an_admission_reports_counts_every_limit_above_the_key() {
    let store = MemoryTree::default();
    let mut tree = KeyTree::default();
    tree.create_root(&store, root_config(5), secret(0)).unwrap().unwrap();
    let kid = child(&mut tree, &store, OBJECT, 0, 1, r#"{"daily_usd_cap":5}"#).unwrap().key_id;
    let other = child(&mut tree, &store, OBJECT, 0, 2, r#"{"daily_usd_cap":4}"#).unwrap().key_id;
    let remaining = |tree: &mut KeyTree, key: &str, s: u8, usd: u64| {
        tree.reserve(&store, T0, key, charge(s, usd)).unwrap().map(|(_, left)| left)
    };
    // Own cap $4 less $1: 3; the parent's $5 less $1: 4. The key's own binds.
    assert_eq!(remaining(&mut tree, &other, 2, 1), Ok(Micros(3_000_000)));
    // Then $2 on the sibling: its own $5 less 2 is 3, the parent's $5 less 3 is 2.
    assert_eq!(remaining(&mut tree, &kid, 1, 2), Ok(Micros(2_000_000)));
    assert_eq!(tree.remaining(&kid, T0), Micros(2_000_000), "the walk agrees with the step's own figure");
}
