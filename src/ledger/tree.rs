//! The keys one Durable Object holds, and the budgets above them.
//!
//! A key issued by the root admin key gets an object of its own. Every key minted from it later
//! (its children, theirs, down to [`MAX_DEPTH`]) lives in that same object, and an issuer's
//! object holds every key the issuer makes and their children. So every limit a call must fit
//! (its own cap, each ancestor's cap over all of that ancestor's descendants, the issuer's
//! budget over all of its keys) is checked and held in one uninterrupted step, exactly, with
//! no hop to another object: nesting costs a call nothing but a few sums.
//!
//! The price is that one object serializes the whole tree, as it already serialized one key.
//! Its throughput, several hundred calls a second here, is above the vendors' own default
//! rate limits (Stripe allows 100 requests a second in live mode).

use crate::core::clock::{utc_day, MS_PER_SEC};
use crate::core::error::{CapScope, ProxyError};
use crate::core::keys::{parse_new_key, KeyConfig, KeyState};
use crate::core::lineage::{parse_new_child, IssuerConfig, IssuerState, MAX_DEPTH};
use crate::core::money::Micros;
use crate::core::token::{member_key_id, SecretHash, MAX_MEMBER};
use crate::core::vendor::Vendor;
use crate::ledger::protocol::{FinishCall, ReserveCall};
use crate::ledger::{Admitted, Headroom, Ledger, LedgerStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Spent plus held.
fn total((spent, held): (Micros, Micros)) -> Micros {
    spent.checked_add(held).unwrap_or(Micros(u64::MAX))
}

/// The issuer an object was made for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerRecord {
    pub config: IssuerConfig,
    pub secret_hash: SecretHash,
    pub revoked_at_ms: Option<u64>,
}

/// Where a tree's state lives: each key's ledger through its own [`LedgerStore`], plus the
/// object's issuer and member count.
pub trait TreeStore {
    type Error;
    type Key: LedgerStore<Error = Self::Error>;
    fn key(&self, key_id: &str) -> Self::Key;
    /// A key's ledger as stored, for a key no longer kept in memory.
    fn load_key(&self, key_id: &str) -> Result<Option<Ledger>, Self::Error>;
    fn put_issuer(&self, issuer: &IssuerRecord) -> Result<(), Self::Error>;
    /// How many keys have been minted inside the object: the source of member numbers.
    fn put_members(&self, members: u64) -> Result<(), Self::Error>;
}

type Answer<T, E> = Result<Result<T, ProxyError>, E>;

/// The most live (unrevoked, unexpired) keys one object holds. Every call sums over the keys in
/// memory, and a leaked vault key must not be able to mint without end: past this, minting and
/// issuing are refused until keys are revoked or expire.
pub const MAX_LIVE_KEYS: usize = 10_000;

#[derive(Debug, Default)]
pub struct KeyTree {
    issuer: Option<IssuerRecord>,
    keys: BTreeMap<String, Ledger>,
    members: u64,
}

impl KeyTree {
    pub fn load(issuer: Option<IssuerRecord>, members: u64, keys: impl IntoIterator<Item = Ledger>) -> KeyTree {
        KeyTree { issuer, members, keys: keys.into_iter().map(|l| (l.config().key_id.clone(), l)).collect() }
    }

    /// Whether the object holds nothing yet.
    pub fn is_empty(&self) -> bool {
        self.issuer.is_none() && self.keys.is_empty()
    }

    pub fn issuer(&self) -> Option<&IssuerRecord> {
        self.issuer.as_ref()
    }

    pub fn ledger(&self, key_id: &str) -> Option<&Ledger> {
        self.keys.get(key_id)
    }

    /// Brings a key back into memory if storage holds it and memory does not (see [`KeyTree::evict`]).
    pub fn resident<S: TreeStore>(&mut self, store: &S, key_id: &str) -> Result<(), S::Error> {
        if !self.keys.contains_key(key_id) {
            if let Some(ledger) = store.load_key(key_id)? {
                self.keys.insert(key_id.to_string(), ledger);
            }
        }
        Ok(())
    }

    /// Drops from memory the keys that have nothing left to do and count for nothing today
    /// ([`Ledger::is_settled_and_dead`]); returns how many. A dead key's descendants are dead
    /// too (a child never outlives its parent), so no live key loses an ancestor.
    pub fn evict(&mut self, now_ms: u64) -> usize {
        let day = utc_day(now_ms);
        let before = self.keys.len();
        self.keys.retain(|_, l| !l.is_settled_and_dead(now_ms, day));
        before - self.keys.len()
    }

    fn live_keys(&self, now_ms: u64) -> usize {
        self.keys.values().filter(|l| l.is_live(now_ms)).count()
    }

    fn full(&self, now_ms: u64) -> Option<ProxyError> {
        (self.live_keys(now_ms) >= MAX_LIVE_KEYS).then(|| {
            ProxyError::Conflict(format!(
                "this tree already holds {MAX_LIVE_KEYS} live keys; revoke some, or wait for them to expire"
            ))
        })
    }

    pub fn ledger_mut(&mut self, key_id: &str) -> Option<&mut Ledger> {
        self.keys.get_mut(key_id)
    }

    pub fn ledgers(&self) -> impl Iterator<Item = &Ledger> {
        self.keys.values()
    }

    pub fn ledgers_mut(&mut self) -> impl Iterator<Item = &mut Ledger> {
        self.keys.values_mut()
    }

    /// Stores the key the object was made for. Refused if the object holds anything.
    pub fn create_root<S: TreeStore>(
        &mut self,
        store: &S,
        config: KeyConfig,
        secret_hash: SecretHash,
    ) -> Answer<(), S::Error> {
        if !self.is_empty() {
            return Ok(Err(ProxyError::Conflict("this object already holds a key".into())));
        }
        let ledger = Ledger::create(&store.key(&config.key_id), config, secret_hash)?;
        self.keys.insert(ledger.config().key_id.clone(), ledger);
        Ok(Ok(()))
    }

    /// Stores the issuer the object was made for. Refused if the object holds anything.
    pub fn create_issuer<S: TreeStore>(
        &mut self,
        store: &S,
        config: IssuerConfig,
        secret_hash: SecretHash,
    ) -> Answer<(), S::Error> {
        if !self.is_empty() {
            return Ok(Err(ProxyError::Conflict("this object already holds a key".into())));
        }
        let issuer = IssuerRecord { config, secret_hash, revoked_at_ms: None };
        store.put_issuer(&issuer)?;
        self.issuer = Some(issuer);
        Ok(Ok(()))
    }

    /// Whether `secret_hash` is the issuer's, and the issuer is not revoked.
    pub fn authenticates_issuer(&self, secret_hash: &SecretHash) -> bool {
        self.issuer.as_ref().is_some_and(|i| i.revoked_at_ms.is_none() && i.secret_hash.matches(secret_hash))
    }

    /// A key the object's issuer makes from a `POST /vault/keys` body, if it fits the ceiling.
    pub fn issue<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        body: &[u8],
        secret_hash: SecretHash,
    ) -> Answer<KeyConfig, S::Error> {
        let Some(issuer) = self.issuer.as_ref().filter(|i| i.revoked_at_ms.is_none()) else {
            return Ok(Err(ProxyError::Unauthorized));
        };
        let new_key = match parse_new_key(body).and_then(|k| issuer.config.admits(&k).map(|()| k)) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        let issuer_id = issuer.config.issuer_id.clone();
        if let Some(e) = self.full(now_ms) {
            return Ok(Err(e));
        }
        let Some(key_id) = self.next_member(store, &issuer_id)? else {
            return Ok(Err(ProxyError::Conflict("this issuer has made as many keys as one object holds".into())));
        };
        let mut config = new_key.into_config(key_id, now_ms);
        config.issuer_id = Some(issuer_id);
        Ok(Ok(self.insert(store, config, secret_hash)?))
    }

    /// A child of `parent_id`, minted by a caller that presented the parent's vault key.
    pub fn mint_child<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        parent_id: &str,
        parent_secret: (Vendor, &SecretHash),
        body: &[u8],
        secret_hash: SecretHash,
    ) -> Answer<KeyConfig, S::Error> {
        self.resident(store, parent_id)?;
        let Some(parent) = self.keys.get(parent_id).filter(|p| p.authenticates(parent_secret.0, parent_secret.1))
        else {
            return Ok(Err(ProxyError::InvalidKey));
        };
        if parent.is_revoked() {
            return Ok(Err(ProxyError::KeyRevoked));
        }
        if !parent.is_live(now_ms) {
            return Ok(Err(ProxyError::KeyExpired));
        }
        if self.depth(parent_id) >= MAX_DEPTH {
            return Ok(Err(ProxyError::InvalidRequest(format!(
                "keys nest at most {MAX_DEPTH} deep; this key cannot have children"
            ))));
        }
        let object_id = crate::core::token::object_of(parent_id).to_string();
        let parent_config = parent.config().clone();
        // The body is checked before a member number is spent on it.
        if let Err(e) = parse_new_child(body, &parent_config, String::new(), now_ms) {
            return Ok(Err(e));
        }
        if let Some(e) = self.full(now_ms) {
            return Ok(Err(e));
        }
        let Some(key_id) = self.next_member(store, &object_id)? else {
            return Ok(Err(ProxyError::Conflict("this tree holds as many keys as one object can".into())));
        };
        let config = match parse_new_child(body, &parent_config, key_id, now_ms) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(self.insert(store, config, secret_hash)?))
    }

    fn next_member<S: TreeStore>(&mut self, store: &S, object_id: &str) -> Result<Option<String>, S::Error> {
        if self.members >= MAX_MEMBER {
            return Ok(None);
        }
        self.members += 1;
        store.put_members(self.members)?;
        Ok(Some(member_key_id(object_id, self.members)))
    }

    fn insert<S: TreeStore>(
        &mut self,
        store: &S,
        config: KeyConfig,
        secret_hash: SecretHash,
    ) -> Result<KeyConfig, S::Error> {
        let ledger = Ledger::create(&store.key(&config.key_id), config, secret_hash)?;
        let config = ledger.config().clone();
        self.keys.insert(config.key_id.clone(), ledger);
        Ok(config)
    }

    /// The key and its ancestors, nearest first.
    fn lineage<'a>(&'a self, key_id: &'a str) -> Vec<&'a str> {
        let mut chain = vec![key_id];
        let mut at = key_id;
        while let Some(parent) = self.keys.get(at).and_then(|l| l.config().parent_key_id.as_deref()) {
            // A parent must be in the same object; depth bounds the walk whatever is stored.
            if chain.len() > MAX_DEPTH || !self.keys.contains_key(parent) {
                break;
            }
            chain.push(parent);
            at = parent;
        }
        chain
    }

    fn depth(&self, key_id: &str) -> usize {
        self.lineage(key_id).len()
    }

    /// The key and all its descendants.
    fn subtree(&self, key_id: &str) -> Vec<String> {
        self.keys.keys().filter(|k| self.lineage(k).contains(&key_id)).cloned().collect()
    }

    /// What the limits above `key_id`'s own cap leave it today (see [`Headroom`]).
    fn headroom(&self, key_id: &str, now_ms: u64) -> Headroom {
        let day = utc_day(now_ms);
        let path = self.lineage(key_id);
        let mut used = vec![Micros::ZERO; path.len()];
        let mut all = Micros::ZERO;
        for ledger in self.keys.values() {
            let used_by = total(ledger.used_on(day));
            if used_by == Micros::ZERO {
                continue;
            }
            all = all.checked_add(used_by).unwrap_or(Micros(u64::MAX));
            for ancestor in self.lineage(&ledger.config().key_id) {
                if let Some(i) = path.iter().position(|p| *p == ancestor) {
                    used[i] = used[i].checked_add(used_by).unwrap_or(Micros(u64::MAX));
                }
            }
        }
        let mut least = Headroom::UNBOUNDED;
        for (i, (node, used)) in path.iter().zip(used).enumerate() {
            let Some(cap) = self.keys.get(*node).map(|l| l.config().daily_cap) else { continue };
            let left = cap.saturating_sub(used);
            if left < least.amount {
                least = Headroom { amount: left, scope: if i == 0 { CapScope::Key } else { CapScope::Parent } };
            }
        }
        if let Some(issuer) = &self.issuer {
            let left = issuer.config.daily_budget.saturating_sub(all);
            if left < least.amount {
                least = Headroom { amount: left, scope: CapScope::Issuer };
            }
        }
        least
    }

    /// Today's spend and holds of the key's descendants.
    fn descendants_used(&self, key_id: &str, now_ms: u64) -> Micros {
        let day = utc_day(now_ms);
        self.subtree(key_id)
            .iter()
            .filter(|k| k.as_str() != key_id)
            .filter_map(|k| self.keys.get(k))
            .map(|l| total(l.used_on(day)))
            .fold(Micros::ZERO, |a, b| a.checked_add(b).unwrap_or(Micros(u64::MAX)))
    }

    /// Runs every check of the key and, if all pass, holds the price against the key's cap and
    /// every limit above it, in one step.
    pub fn reserve<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        key_id: &str,
        call: ReserveCall,
    ) -> Answer<(Admitted, Micros), S::Error> {
        self.resident(store, key_id)?;
        let headroom = self.headroom(key_id, now_ms);
        let Some(ledger) = self.keys.get_mut(key_id) else {
            return Ok(Err(ProxyError::InvalidKey));
        };
        let day = utc_day(now_ms);
        let before = total(ledger.used_on(day));
        let admitted = ledger.reserve_within(&store.key(key_id), now_ms, call, headroom)?;
        // Every limit above the key grew by what the key itself now holds more: no second walk.
        let grown = total(ledger.used_on(day)).saturating_sub(before);
        let remaining = ledger.remaining().min(headroom.amount.saturating_sub(grown));
        Ok(admitted.map(|a| (a, remaining)))
    }

    /// What the key could still hold today, its own cap and every limit above it counted.
    pub fn remaining(&self, key_id: &str, now_ms: u64) -> Micros {
        let own = self.keys.get(key_id).map_or(Micros::ZERO, Ledger::remaining);
        own.min(self.headroom(key_id, now_ms).amount)
    }

    pub fn finish<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        key_id: &str,
        call: FinishCall,
    ) -> Result<(), S::Error> {
        self.resident(store, key_id)?;
        match self.keys.get_mut(key_id) {
            Some(ledger) => ledger.finish(&store.key(key_id), now_ms, call),
            None => Ok(()),
        }
    }

    pub fn state<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        key_id: &str,
        audit_pending: u64,
    ) -> Result<Option<KeyState>, S::Error> {
        self.resident(store, key_id)?;
        let descendants = self.descendants_used(key_id, now_ms);
        Ok(self.keys.get_mut(key_id).map(|ledger| KeyState { descendants, ..ledger.state(now_ms, audit_pending) }))
    }

    /// Revokes each key and all its descendants. Returns every key revoked by this call or
    /// before it, among those named and their descendants; unknown ids are skipped.
    pub fn revoke<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        key_ids: &[String],
    ) -> Result<Vec<String>, S::Error> {
        let mut revoked: Vec<String> = Vec::new();
        for key_id in key_ids {
            self.resident(store, key_id)?;
            for k in self.subtree(key_id) {
                if revoked.contains(&k) {
                    continue;
                }
                if let Some(ledger) = self.keys.get_mut(&k) {
                    ledger.revoke(&store.key(&k), now_ms)?;
                }
                revoked.push(k);
            }
        }
        Ok(revoked)
    }

    /// Revokes the issuer and every key in the object. Idempotent.
    pub fn revoke_issuer<S: TreeStore>(&mut self, store: &S, now_ms: u64) -> Result<Vec<String>, S::Error> {
        if let Some(issuer) = self.issuer.as_mut().filter(|i| i.revoked_at_ms.is_none()) {
            issuer.revoked_at_ms = Some(now_ms);
            store.put_issuer(issuer)?;
        }
        let all: Vec<String> = self.keys.keys().cloned().collect();
        self.revoke(store, now_ms, &all)
    }

    /// Moves a key's expiry, no further than its parent's, nor past its issuer's longest TTL.
    pub fn refresh<S: TreeStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        key_id: &str,
        ttl_secs: u64,
    ) -> Answer<(), S::Error> {
        self.resident(store, key_id)?;
        let expires_at_ms = now_ms.saturating_add(ttl_secs.saturating_mul(MS_PER_SEC));
        let parent = self.keys.get(key_id).and_then(|l| l.config().parent_key_id.clone());
        if let Some(parent) = parent.and_then(|p| self.keys.get(&p)) {
            if expires_at_ms > parent.config().expires_at_ms {
                return Ok(Err(ProxyError::InvalidRequest("expires_in would outlive the parent key".into())));
            }
        }
        if let Some(max) = self.issuer.as_ref().and_then(|i| i.config.max_ttl_secs).filter(|max| ttl_secs > *max) {
            return Ok(Err(ProxyError::InvalidRequest(format!(
                "expires_in is longer than this issuer's max_expires_in of {max} s"
            ))));
        }
        match self.keys.get_mut(key_id) {
            Some(ledger) => ledger.refresh(&store.key(key_id), now_ms, ttl_secs),
            None => Ok(Err(ProxyError::NotFound)),
        }
    }

    /// The issuer's state: today's spend and holds over all its keys.
    pub fn issuer_state(&self, now_ms: u64) -> Option<IssuerState> {
        let issuer = self.issuer.as_ref()?;
        let day = utc_day(now_ms);
        let (mut spent, mut held) = (Micros::ZERO, Micros::ZERO);
        for ledger in self.keys.values() {
            let (s, h) = ledger.used_on(day);
            spent = spent.checked_add(s).unwrap_or(Micros(u64::MAX));
            held = held.checked_add(h).unwrap_or(Micros(u64::MAX));
        }
        Some(IssuerState {
            config: issuer.config.clone(),
            revoked_at_ms: issuer.revoked_at_ms,
            spent,
            held,
            live_keys: self.live_keys(now_ms) as u64,
        })
    }

    /// The key and its ancestors, nearest first: every key whose cap a call on it counts in.
    pub fn chain(&self, key_id: &str) -> Vec<String> {
        self.lineage(key_id).into_iter().map(String::from).collect()
    }

    /// Today's spend of the key and all its descendants (no holds): what its alert thresholds
    /// are crossed by, as its cap binds them all.
    pub fn subtree_spent(&self, key_id: &str, now_ms: u64) -> Micros {
        let day = utc_day(now_ms);
        self.subtree(key_id)
            .iter()
            .filter_map(|k| self.keys.get(k))
            .map(|l| l.used_on(day).0)
            .fold(Micros::ZERO, |a, b| a.checked_add(b).unwrap_or(Micros(u64::MAX)))
    }

    /// Calls still under way (see [`Ledger::in_flight`]) on any of `key_ids`.
    pub fn in_flight(&self, now_ms: u64, cut_off_ms: u64, key_ids: &[String]) -> usize {
        key_ids.iter().filter_map(|k| self.keys.get(k)).map(|l| l.in_flight(now_ms, cut_off_ms)).sum()
    }
}
