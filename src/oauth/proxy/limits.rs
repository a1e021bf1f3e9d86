//! The proxy's rate limits: a token bucket for dynamic registrations, and the sign-ins in
//! progress per client and per address. Counted in this process (a replica counts its
//! own), or with `[store]` in Redis (every replica counts against the same limits, by
//! scripts that check and count in one step, on the server's clock). A store failure is
//! an error (`503`), never room.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
#[cfg(feature = "redis")]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use http::header::{self, HeaderValue};

use super::super::html;
use super::super::keys::digest_b64;
use super::sealed::Pending;
#[cfg(feature = "redis")]
use crate::store::redis::Shared;

/// A limit that could not be counted: the shared store failed.
#[derive(Debug)]
pub(super) struct Uncounted(pub(super) String);

/// Sign-ins one address may have in progress at once (an IPv4 address, or an IPv6 /64).
pub(super) const MAX_SIGN_INS_PER_ADDRESS: usize = 64;
/// Sign-ins one client may have in progress at once, from all addresses together.
pub(super) const MAX_SIGN_INS_PER_CLIENT: usize = 256;

/// A token bucket for registrations (per minute, burst of the same size).
pub(super) struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
    per_minute: f64,
}

impl Bucket {
    /// A full bucket of `per_minute` registrations.
    pub(super) fn new(per_minute: u32, now: tokio::time::Instant) -> Self {
        let per_minute = f64::from(per_minute);
        Self {
            tokens: per_minute,
            last: now,
            per_minute,
        }
    }

    /// Takes a token at `now`; otherwise the seconds until there is one (at least 1).
    pub(super) fn take(&mut self, now: tokio::time::Instant) -> Result<(), u64> {
        let per_minute = self.per_minute;
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_minute / 60.0).min(per_minute);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) * 60.0 / per_minute).ceil().max(1.0) as u64)
        }
    }
}

/// The registration limit: a bucket in this process, or one in Redis for all replicas.
pub(super) struct Registrations {
    local: Mutex<Bucket>,
    per_minute: u32,
    #[cfg(feature = "redis")]
    shared: Option<Arc<Shared>>,
}

/// KEYS: the bucket (a hash). ARGV: registrations per minute. 0, or the seconds to wait.
#[cfg(feature = "redis")]
const BUCKET: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per = tonumber(ARGV[1])
if per <= 0 then return 60 end
local b = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(b[1]) or per
local last = tonumber(b[2]) or now
tokens = math.min(per, tokens + math.max(0, now - last) * per / 60000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.max(1, math.ceil((1 - tokens) * 60 / per)) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', now)
redis.call('PEXPIRE', KEYS[1], 120000)
return wait";

impl Registrations {
    /// `per_minute` registrations, counted here.
    pub(super) fn local(per_minute: u32) -> Self {
        Self {
            local: Mutex::new(Bucket::new(per_minute, tokio::time::Instant::now())),
            per_minute,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// `per_minute` registrations across every replica using `shared`.
    #[cfg(feature = "redis")]
    pub(super) fn shared(per_minute: u32, shared: Arc<Shared>) -> Self {
        Self {
            shared: Some(shared),
            ..Self::local(per_minute)
        }
    }

    /// Takes a registration; otherwise the seconds to wait.
    pub(super) async fn take(&self) -> Result<Result<(), u64>, Uncounted> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(BUCKET));
            let mut inv = script.prepare_invoke();
            inv.key(shared.key(&["limit", "registrations"]))
                .arg(self.per_minute);
            let wait: u64 = shared.script(inv).await.map_err(|e| Uncounted(e.0))?;
            return Ok(if wait == 0 { Ok(()) } else { Err(wait) });
        }
        let _ = self.per_minute;
        Ok(self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(tokio::time::Instant::now()))
    }
}

/// Sign-ins in progress — a pending authorization request, then the Entra leg of an
/// approved one — counted per client and per address, so that one client or one address
/// cannot fill the store's share of pending requests (and answer everyone's sign-in with
/// `503`). Each place is the deadline of the record it stands for; a consent, a
/// callback or the deadline frees it. Counted in this process, or in Redis for every
/// replica (a sorted set of deadlines per client and per address).
pub(super) struct SignIns {
    tallies: Mutex<(Tally<String>, Tally<IpAddr>)>,
    #[cfg(feature = "redis")]
    shared: Option<Arc<Shared>>,
}

/// KEYS: the client's places, the address's places. ARGV: ttl ms, client limit, address
/// limit, a fresh member, whether there is an address (`1`), whether to check (`1`).
/// `-1` when a place was taken, otherwise the milliseconds until there is room.
#[cfg(feature = "redis")]
const ADMIT: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local n = 1
if ARGV[5] == '1' then n = 2 end
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local wait = -1
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if ARGV[6] == '1' and redis.call('ZCARD', KEYS[i]) >= limits[i] then
    local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local w = 0
    if first[2] then w = tonumber(first[2]) - now end
    if w > wait then wait = w end
  end
end
if wait >= 0 then return wait end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return -1";

/// KEYS: the client's places, the address's places (if any). Frees the place of each that
/// ends first.
#[cfg(feature = "redis")]
const RELEASE: &str = "for i = 1, #KEYS do redis.call('ZPOPMIN', KEYS[i]) end return 1";

/// Deadlines per key, at most `limit` live ones each.
struct Tally<K> {
    map: HashMap<K, VecDeque<tokio::time::Instant>>,
    limit: usize,
    /// Sweep the whole map for expired keys when it grows to this many.
    sweep_at: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Tally<K> {
    fn new(limit: usize) -> Self {
        Self {
            map: HashMap::new(),
            limit,
            sweep_at: 1024,
        }
    }

    /// How long until `key` has room again; `None` when it has room now.
    fn wait(&mut self, key: &K, now: tokio::time::Instant) -> Option<Duration> {
        let places = self.map.get_mut(key)?;
        while places.front().is_some_and(|d| *d <= now) {
            places.pop_front();
        }
        if places.len() < self.limit {
            return None;
        }
        Some(
            places
                .front()
                .map_or(Duration::ZERO, |d| d.saturating_duration_since(now)),
        )
    }

    fn push(&mut self, key: K, deadline: tokio::time::Instant, now: tokio::time::Instant) {
        if self.map.len() >= self.sweep_at {
            self.map
                .retain(|_, places| places.back().is_some_and(|d| *d > now));
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
        let places = self.map.entry(key).or_default();
        // Deadlines stay in order (ttls are equal or pushed later).
        let at = places.partition_point(|d| *d <= deadline);
        places.insert(at, deadline);
    }

    /// Frees the place that ends first (a finished sign-in's own deadline may be later:
    /// keeping the later one errs on the strict side).
    fn pop(&mut self, key: &K) {
        if let Some(places) = self.map.get_mut(key) {
            places.pop_front();
            if places.is_empty() {
                self.map.remove(key);
            }
        }
    }
}

impl SignIns {
    pub(super) fn new(per_client: usize, per_address: usize) -> Self {
        Self {
            tallies: Mutex::new((Tally::new(per_client), Tally::new(per_address))),
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// The same limits, counted in Redis for every replica using `shared`.
    #[cfg(feature = "redis")]
    pub(super) fn shared(per_client: usize, per_address: usize, shared: Arc<Shared>) -> Self {
        Self {
            shared: Some(shared),
            ..Self::new(per_client, per_address)
        }
    }

    /// The shared script for `pending`: `Ok(None)` when counted in this process.
    #[cfg(feature = "redis")]
    async fn shared_admit(
        &self,
        pending: &Pending,
        ttl: Duration,
        check: bool,
    ) -> Result<Option<Result<(), Duration>>, Uncounted> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(ADMIT));
        let (client, address) = sign_in_keys(pending);
        let (limit_client, limit_address) = {
            let t = self.lock();
            (t.0.limit, t.1.limit)
        };
        let member = super::super::keys::random_token(12)
            .ok_or_else(|| Uncounted("no randomness available".into()))?;
        let address_key = address.map_or_else(String::new, |a| a.to_string());
        let mut inv = script.prepare_invoke();
        inv.key(shared.key(&["limit", "signin", "client", &client]))
            .key(shared.key(&["limit", "signin", "address", &address_key]))
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(limit_client)
            .arg(limit_address)
            .arg(member)
            .arg(if address.is_some() { "1" } else { "0" })
            .arg(if check { "1" } else { "0" });
        let wait: i64 = shared.script(inv).await.map_err(|e| Uncounted(e.0))?;
        Ok(Some(match u64::try_from(wait) {
            Ok(ms) => Err(Duration::from_millis(ms)),
            Err(_) => Ok(()),
        }))
    }

    /// Takes a place for a new sign-in of `pending` for `ttl`; otherwise how long until
    /// there is room.
    pub(super) async fn admit_counted(
        &self,
        pending: &Pending,
        ttl: Duration,
    ) -> Result<Result<(), Duration>, Uncounted> {
        #[cfg(feature = "redis")]
        if let Some(answer) = self.shared_admit(pending, ttl, true).await? {
            return Ok(answer);
        }
        Ok(self.admit(pending, ttl))
    }

    /// Takes a place without checking (see [`hold`](Self::hold)).
    pub(super) async fn hold_counted(
        &self,
        pending: &Pending,
        ttl: Duration,
    ) -> Result<(), Uncounted> {
        #[cfg(feature = "redis")]
        if self.shared_admit(pending, ttl, false).await?.is_some() {
            return Ok(());
        }
        self.hold(pending, ttl);
        Ok(())
    }

    /// Frees a place of this sign-in's client and address. A failure to free errs on the
    /// strict side: the place ends with its deadline.
    pub(super) async fn release_counted(&self, pending: &Pending) {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(RELEASE));
            let (client, address) = sign_in_keys(pending);
            let mut inv = script.prepare_invoke();
            inv.key(shared.key(&["limit", "signin", "client", &client]));
            if let Some(a) = address {
                inv.key(shared.key(&["limit", "signin", "address", &a.to_string()]));
            }
            let _: Result<i64, _> = shared.script(inv).await;
            return;
        }
        self.release(pending);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Tally<String>, Tally<IpAddr>)> {
        self.tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a new sign-in of `pending` for `ttl`; otherwise how long until
    /// there is room.
    pub(super) fn admit(&self, pending: &Pending, ttl: Duration) -> Result<(), Duration> {
        let (client, address) = sign_in_keys(pending);
        let now = tokio::time::Instant::now();
        let mut t = self.lock();
        let (clients, addresses) = &mut *t;
        let wait = [
            clients.wait(&client, now),
            address.and_then(|a| addresses.wait(&a, now)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        clients.push(client, now + ttl, now);
        if let Some(a) = address {
            addresses.push(a, now + ttl, now);
        }
        Ok(())
    }

    /// Takes a place without checking: for a step that follows a [`release`](Self::release)
    /// of the same sign-in.
    pub(super) fn hold(&self, pending: &Pending, ttl: Duration) {
        let (client, address) = sign_in_keys(pending);
        let now = tokio::time::Instant::now();
        let mut t = self.lock();
        let (clients, addresses) = &mut *t;
        clients.push(client, now + ttl, now);
        if let Some(a) = address {
            addresses.push(a, now + ttl, now);
        }
    }

    /// Frees a place of this sign-in's client and address.
    pub(super) fn release(&self, pending: &Pending) {
        let (client, address) = sign_in_keys(pending);
        let mut t = self.lock();
        let (clients, addresses) = &mut *t;
        clients.pop(&client);
        if let Some(a) = address {
            addresses.pop(&a);
        }
    }
}

/// What a sign-in counts against: a digest of its client id, and its address (IPv6 by
/// its /64, what one host or site usually holds).
fn sign_in_keys(pending: &Pending) -> (String, Option<IpAddr>) {
    let address = pending.origin.map(|a| match a.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    });
    (digest_b64(&pending.client_id), address)
}

/// `429` for `/authorize` when the client or the address has too many sign-ins in progress.
pub(super) fn too_many_sign_ins(wait: Duration) -> Response {
    let secs = wait.as_secs().saturating_add(1);
    let mut res = html::error_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "Too many sign-ins are in progress for this client or from this network. Try again in {secs} seconds."
        ),
    );
    let h = res.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(client: &str, origin: Option<&str>) -> Pending {
        Pending {
            origin: origin.map(|o| o.parse().unwrap()),
            client_id: client.to_owned(),
            client_name: String::new(),
            metadata_document: false,
            redirect_uri: String::new(),
            redirect_presented: false,
            state: None,
            challenge: String::new(),
            scopes: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sign_ins_are_limited_per_address_and_per_client() {
        let ttl = Duration::from_secs(600);
        let s = SignIns::new(5, 3);
        for _ in 0..3 {
            s.admit(&pending("a", Some("10.0.0.1")), ttl).unwrap();
        }
        // The address is full; the same client from elsewhere is not.
        let wait = s.admit(&pending("b", Some("10.0.0.1")), ttl).unwrap_err();
        assert_eq!(wait, ttl);
        s.admit(&pending("a", Some("10.0.0.2")), ttl).unwrap();
        s.admit(&pending("a", None), ttl).unwrap();
        // The client is full (5), from any address.
        assert!(s.admit(&pending("a", Some("10.0.0.3")), ttl).is_err());
        s.admit(&pending("c", Some("10.0.0.3")), ttl).unwrap();
        // A finished sign-in frees its places.
        s.release(&pending("a", Some("10.0.0.1")));
        s.admit(&pending("a", Some("10.0.0.1")), ttl).unwrap();
        // Places expire with their records.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(
            s.admit(&pending("d", Some("10.0.0.1")), ttl).unwrap_err(),
            Duration::from_secs(300)
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        s.admit(&pending("d", Some("10.0.0.1")), ttl).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_network_counts_as_one_address() {
        let ttl = Duration::from_secs(600);
        let s = SignIns::new(100, 2);
        s.admit(&pending("a", Some("2001:db8::1")), ttl).unwrap();
        s.admit(&pending("b", Some("2001:db8::ffff:2")), ttl)
            .unwrap();
        assert!(s.admit(&pending("c", Some("2001:db8::3")), ttl).is_err());
        s.admit(&pending("c", Some("2001:db8:0:1::3")), ttl)
            .unwrap();
        // An IPv4-mapped address is the IPv4 address.
        s.admit(&pending("a", Some("::ffff:10.0.0.9")), ttl)
            .unwrap();
        s.admit(&pending("a", Some("10.0.0.9")), ttl).unwrap();
        assert!(s.admit(&pending("a", Some("10.0.0.9")), ttl).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_swept() {
        let ttl = Duration::from_secs(10);
        let s = SignIns::new(1, 1);
        for i in 0..1000u32 {
            s.admit(&pending(&i.to_string(), None), ttl).unwrap();
        }
        tokio::time::advance(ttl).await;
        for i in 0..30u32 {
            s.admit(&pending(&format!("late{i}"), None), ttl).unwrap();
        }
        assert!(s.lock().0.map.len() <= 30, "{}", s.lock().0.map.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_place_counts_without_a_check() {
        let ttl = Duration::from_secs(600);
        let s = SignIns::new(1, 10);
        s.admit(&pending("a", None), ttl).unwrap();
        // The step after a release takes its place back even when full.
        s.hold(&pending("a", None), ttl);
        s.release(&pending("a", None));
        assert!(s.admit(&pending("a", None), ttl).is_err(), "one place left");
        s.release(&pending("a", None));
        s.admit(&pending("a", None), ttl).unwrap();
    }

    #[test]
    fn the_registration_bucket_refills_per_minute() {
        let start = tokio::time::Instant::now();
        let mut b = Bucket::new(3, start);
        // A burst of the whole minute's worth, then a wait.
        for _ in 0..3 {
            b.take(start).unwrap();
        }
        assert_eq!(b.take(start), Err(20), "one token every 20 s");
        // Refills with time, never beyond the burst.
        let later = start + Duration::from_secs(20);
        b.take(later).unwrap();
        assert_eq!(b.take(later), Err(20));
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(much_later).unwrap();
        }
        assert!(b.take(much_later).is_err());
    }

    #[test]
    fn the_registration_wait_is_at_least_a_second() {
        let start = tokio::time::Instant::now();
        let mut b = Bucket::new(600, start);
        for _ in 0..600 {
            b.take(start).unwrap();
        }
        assert_eq!(b.take(start), Err(1));
        assert_eq!(b.take(start + Duration::from_millis(50)), Err(1));
        b.take(start + Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn sign_in_keys_digest_the_client_and_cut_ipv6_to_the_network() {
        let (client, address) = sign_in_keys(&pending("a", Some("2001:db8::1:2:3:4")));
        assert_eq!(client, digest_b64("a"));
        assert_eq!(address, Some("2001:db8::".parse().unwrap()));
        let (_, address) = sign_in_keys(&pending("a", Some("::ffff:192.0.2.7")));
        assert_eq!(address, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(sign_in_keys(&pending("a", None)).1, None);
    }

    #[test]
    fn too_many_sign_ins_says_when_to_retry() {
        let res = too_many_sign_ins(Duration::from_millis(29_500));
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "30");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    }
}
