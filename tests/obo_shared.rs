//! The on-behalf-of token cache's second level, with a real `redis-server` and the dev
//! Entra emulator over loopback: two replicas (two `IdGuard`s, each its own first level)
//! share one Redis; a token one obtained serves the other, concurrent first requests across
//! both cost at most two token requests, Redis holds tokens sealed and bound to their key,
//! a dead lock holder is taken over, a proactive refresh serves every replica, Redis
//! stopped answers `503` with `Retry-After` and Redis back resumes without a rebuild, and
//! tokens expire as in the first level.

#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idguard::obo::{BearerToken, Obo, Secret, SharedTokenCache};
use idguard::{IdGuard, OboConfig, Rejection};
use idguard_dev::{DevEndpoint, DevEntra};
use redis::aio::ConnectionManager;
use redis_server::RedisServer;
use serde_json::Value;

const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";
const PREFIX: &str = "test:";
const KEY: &str = "0123456789abcdef0123456789abcdef-obo-shared-cache-key";

/// One replica: its own guard (its own first level) and HTTP server.
struct Replica {
    guard: IdGuard,
    base: String,
    http: reqwest::Client,
}

async fn connection(redis: &RedisServer) -> ConnectionManager {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .unwrap()
}

fn obo_config(entra: &DevEntra, skew: &str) -> OboConfig {
    OboConfig {
        client_secret: Some(Secret::new(entra.client_secret())),
        apis: BTreeMap::from([("graph".to_owned(), vec![GRAPH_DEFAULT.to_owned()])]),
        graph_url: Some(entra.graph_url()),
        skew: Some(skew.into()),
        ..OboConfig::default()
    }
}

async fn replica(entra: &DevEntra, redis: &RedisServer, skew: &str) -> Replica {
    let shared = SharedTokenCache::new(
        connection(redis).await,
        PREFIX,
        &[Secret::new(KEY)],
        Duration::from_secs(1),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let guard = IdGuard::builder()
        .authority(entra.url())
        .tenant(entra.tenant_id())
        .client_id(entra.api_client_id())
        .resource(format!("{base}/api"))
        .obo(obo_config(entra, skew))
        .obo_shared_cache(shared)
        .build()
        .await
        .unwrap();
    let app = Router::new()
        .route(
            "/api/token/{api}",
            get(|obo: Obo, Path(api): Path<String>| async move {
                let token = obo.token_for(&api).await?;
                Ok::<_, Rejection>(token.expose_secret().to_owned())
            }),
        )
        .route_layer(guard.validate_token_layer());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Replica {
        guard,
        base,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl Replica {
    async fn graph(&self, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api/token/graph", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn graph_token(&self, token: &str) -> String {
        let res = self.graph(token).await;
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    /// Polls until the replica serves a token other than `old` (a background refresh).
    async fn token_other_than(&self, token: &str, old: &str) -> String {
        for _ in 0..1_000 {
            let served = self.graph_token(token).await;
            if served != old {
                return served;
            }
            tokio::task::yield_now().await;
        }
        panic!("no refreshed token served");
    }

    fn stats(&self) -> idguard::obo::OboStats {
        self.guard.obo_client().unwrap().stats()
    }
}

fn token_requests(entra: &DevEntra) -> u64 {
    entra.requests(DevEndpoint::Token)
}

fn oid_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()["oid"]
        .clone()
}

/// One raw Redis command, as an operator would type it.
async fn raw_cmd<T: redis::FromRedisValue>(raw: &mut ConnectionManager, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(raw).await.unwrap()
}

/// The names of the on-behalf-of tokens in Redis, with a raw connection.
async fn obo_keys(raw: &mut ConnectionManager) -> Vec<String> {
    let mut keys: Vec<String> = raw_cmd(raw, &["KEYS", &format!("{PREFIX}obo:*")]).await;
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_obtained_on_one_replica_is_served_by_the_other_from_redis() {
    let redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    let a = replica(&entra, &redis, "60s").await;
    let b = replica(&entra, &redis, "60s").await;
    let alice = entra.token_for("alice").unwrap().mint().unwrap();

    let from_a = a.graph_token(&alice).await;
    assert_eq!(token_requests(&entra), 1);
    let from_b = b.graph_token(&alice).await;
    assert_eq!(from_a, from_b, "the same downstream token");
    assert_eq!(
        token_requests(&entra),
        1,
        "the emulator saw one token request"
    );
    assert_eq!(b.stats().exchanges, 0);
    assert_eq!(b.stats().shared_hits, 1);
    // B's first level holds it now.
    b.graph_token(&alice).await;
    assert_eq!(b.stats().shared_hits, 1);
    assert_eq!(b.stats().cache_hits, 1);

    // Another user is another entry, on either replica.
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    let bobs = b.graph_token(&bob).await;
    assert_eq!(token_requests(&entra), 2);
    assert_eq!(oid_of(&bobs), oid_of(&b.graph_token(&bob).await));
    assert_ne!(oid_of(&bobs), oid_of(&from_a));
    assert_eq!(a.graph_token(&bob).await, bobs);
    assert_eq!(token_requests(&entra), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_first_requests_across_two_replicas_cost_at_most_two() {
    let redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    let replicas = Arc::new([
        replica(&entra, &redis, "60s").await,
        replica(&entra, &redis, "60s").await,
    ]);
    let alice = Arc::new(entra.token_for("alice").unwrap().mint().unwrap());
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let (replicas, alice) = (replicas.clone(), alice.clone());
            tokio::spawn(async move { replicas[i % 2].graph_token(&alice).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.unwrap());
    }
    let requests = token_requests(&entra);
    assert!(
        requests <= 2,
        "{requests} token requests for 100 first requests"
    );
    tokens.dedup();
    assert!(tokens.len() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_tokens_sealed_and_bound_to_their_key() {
    let redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    let a = replica(&entra, &redis, "60s").await;
    let mut raw = connection(&redis).await;
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    let token = a.graph_token(&alice).await;

    let keys = obo_keys(&mut raw).await;
    assert_eq!(keys.len(), 1);
    let alice_key = keys[0].clone();
    let hex = alice_key.strip_prefix("test:obo:").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
    let stored: String = raw_cmd(&mut raw, &["GET", &alice_key]).await;
    for secret in [&token, &alice] {
        assert!(!stored.contains(secret.as_str()), "no token in clear");
        assert!(!alice_key.contains(secret.as_str()));
        // Not even one of its parts (header, claims, signature).
        for part in secret.split('.') {
            assert!(!stored.contains(part));
        }
    }
    // PX: the token's remaining lifetime minus the skew (1 h - 60 s), as in moka.
    let pttl: i64 = raw_cmd(&mut raw, &["PTTL", &alice_key]).await;
    assert!(pttl > 3_000_000 && pttl <= 3_540_000, "{pttl}");

    // Alice's sealed token copied under Bob's key does not open there: Bob gets his own.
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    a.graph_token(&bob).await;
    let bob_key = obo_keys(&mut raw)
        .await
        .into_iter()
        .find(|k| *k != alice_key)
        .unwrap();
    let () = raw_cmd(&mut raw, &["SET", &bob_key, &stored, "PX", "60000"]).await;
    let c = replica(&entra, &redis, "60s").await;
    let before = token_requests(&entra);
    let bobs = c.graph_token(&bob).await;
    assert_ne!(bobs, token, "never a token for another key");
    assert_eq!(oid_of(&bobs), oid_of(&a.graph_token(&bob).await));
    assert_eq!(token_requests(&entra), before + 1, "exchanged anew");
    // And the direct API agrees with what the handler served.
    let principal = c.guard.validate(&alice).await.unwrap();
    let direct = c
        .guard
        .obo_client()
        .unwrap()
        .token_for(&principal, &BearerToken::new(alice.as_str()), "graph")
        .await
        .unwrap();
    assert_eq!(direct.expose_secret(), token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_is_taken_over_after_its_lock_expires() {
    let redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    let a = replica(&entra, &redis, "60s").await;
    let mut raw = connection(&redis).await;
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    a.graph_token(&alice).await;
    let key = obo_keys(&mut raw).await.remove(0);
    // As if a replica took the lock for this key and died before writing the token.
    let lock = key.replace("test:obo:", "test:obo-lock:");
    let () = raw_cmd(&mut raw, &["DEL", &key]).await;
    let () = raw_cmd(
        &mut raw,
        &["SET", &lock, "a replica that died", "PX", "300"],
    )
    .await;

    let b = replica(&entra, &redis, "60s").await;
    let token = b.graph_token(&alice).await;
    assert_eq!(token_requests(&entra), 2, "B exchanged itself");
    assert_eq!(oid_of(&token), oid_of(&alice));
    // B released its own lock and shared the token.
    let locks: Vec<String> = raw_cmd(&mut raw, &["KEYS", &format!("{PREFIX}obo-lock:*")]).await;
    assert!(locks.is_empty(), "{locks:?}");
    assert_eq!(obo_keys(&mut raw).await, vec![key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_answers_503_with_retry_after_and_resumes_when_back() {
    let mut redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    let a = replica(&entra, &redis, "60s").await;
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    let bob = entra.token_for("bob").unwrap().mint().unwrap();
    a.graph_token(&alice).await;

    redis.stop();
    // A first-level miss cannot go around Redis: 503, Retry-After, no exchange.
    let res = a.graph(&bob).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "2");
    assert!(res.text().await.unwrap().find("eyJ").is_none());
    assert_eq!(token_requests(&entra), 1);
    // What the first level holds keeps serving.
    assert_eq!(a.graph(&alice).await.status(), 200);

    redis.restart();
    // The connection manager reconnects on its own: poll until an answer is 200.
    let mut status = 0;
    for _ in 0..100 {
        status = a.graph(&bob).await.status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        tokio::task::yield_now().await;
    }
    assert_eq!(status, 200, "service resumed without a new IdGuard");
    assert_eq!(token_requests(&entra), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_not_served_past_their_lifetime() {
    let redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    // 3 s tokens and a 2 s skew: served for 1 s.
    entra.set_downstream_lifetime(Duration::from_secs(3));
    let a = replica(&entra, &redis, "2s").await;
    let b = replica(&entra, &redis, "2s").await;
    let mut raw = connection(&redis).await;
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    let first = a.graph_token(&alice).await;
    let key = obo_keys(&mut raw).await.remove(0);
    let pttl: i64 = raw_cmd(&mut raw, &["PTTL", &key]).await;
    assert!(pttl > 0 && pttl <= 1_000, "{pttl}");

    // Past its lifetime (Redis's own expiry): no replica serves it.
    let mut left = pttl;
    while left > 0 {
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap() + 50)).await;
        left = raw_cmd(&mut raw, &["PTTL", &key]).await;
    }
    let later = b.graph_token(&alice).await;
    assert_eq!(token_requests(&entra), 2);
    assert_eq!(b.stats().shared_hits, 0);
    assert_ne!(first, later);
    assert_eq!(
        a.graph_token(&alice).await,
        later,
        "A's first level expired too"
    );
    assert_eq!(token_requests(&entra), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proactive_refresh_on_one_replica_serves_the_others() {
    let redis = RedisServer::start();
    let entra = DevEntra::builder().start().await.unwrap();
    entra.set_refresh_in(Some(Duration::from_secs(2)));
    let a = replica(&entra, &redis, "60s").await;
    let b = replica(&entra, &redis, "60s").await;
    let alice = entra.token_for("alice").unwrap().mint().unwrap();
    let first = a.graph_token(&alice).await;
    assert_eq!(b.graph_token(&alice).await, first);
    assert_eq!(token_requests(&entra), 1);

    // Past the refresh point (Entra's `refresh_in`), each replica keeps serving its token
    // and refreshes in the background: A exchanges, B takes A's fresh token from Redis.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let refreshed = a.token_other_than(&alice, &first).await;
    assert_eq!(b.token_other_than(&alice, &first).await, refreshed);
    assert_eq!(token_requests(&entra), 2, "one refresh for both replicas");
    assert_eq!(b.stats().exchanges, 0);
}
