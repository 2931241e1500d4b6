//! Purges across instances sharing a real Redis that holds a million unrelated keys: every
//! URL, prefix and tag purge through one instance reaches all three, Redis pausing around a
//! purge never makes it "200 and stale", fills made during a hiccup are not lost, and an unsafe
//! request through one instance invalidates what every instance holds.

mod cache_support;
mod common;

use std::time::{Duration, Instant};

use cache_support::*;
use common::{eventually, quiescent};
use scalegate_testkit::client::Client;
use scalegate_testkit::{GatewayProcess, Origin, RedisServer};

/// Keys written per script call when filling Redis.
const CHUNK: usize = 50_000;

/// Fills Redis with `n` keys the cache knows nothing about, plus as many entries in the cache's
/// own URL index for another host (so the index itself is big too).
async fn fill_unrelated(redis: &RedisServer, n: usize) {
    let script = "for i = 1, tonumber(ARGV[2]) do \
        local k = 'junk.example/junk/' .. ARGV[1] .. '/' .. i \
        redis.call('SET', 'unrelated:' .. ARGV[1] .. ':' .. i, 'x') \
        redis.call('ZADD', 'scalegate:cache:idx:url', 0, k) \
        redis.call('ZADD', 'scalegate:cache:idx:path', 0, string.sub(k, 13) .. '\\0' .. k) \
        end return 1";
    for chunk in 0..n.div_ceil(CHUNK) {
        let reply = redis
            .command_within(
                &["EVAL", script, "0", &chunk.to_string(), &CHUNK.to_string()],
                Duration::from_secs(60),
            )
            .await;
        assert!(
            reply.as_deref().is_some_and(|r| r.starts_with(":1")),
            "filling redis: {reply:?}"
        );
    }
    let size = redis.command(&["DBSIZE"]).await.unwrap_or_default();
    let keys: usize = size.trim_start_matches(':').trim().parse().unwrap_or(0);
    assert!(keys >= n, "DBSIZE {size}");
}

/// An origin answering `path #n`, fresh for an hour; paths under /t/ are tagged `news`.
async fn origin() -> Origin {
    Origin::start(|req, n| {
        let path = req.uri.path();
        let tag = if path.starts_with("/t/") {
            "news"
        } else {
            "other"
        };
        resp(
            200,
            &[("cache-control", "max-age=3600"), ("surrogate-key", tag)],
            &format!("{path} #{n}"),
        )
    })
    .await
}

/// Three instances sharing `redis`, each connected to it.
async fn three(o: &Origin, redis: &RedisServer) -> Vec<GatewayProcess> {
    three_with(o, redis, "").await
}

/// [`three`], with more settings of the `[cache]` Redis tier (`, timeout = "2s"`).
async fn three_with(o: &Origin, redis: &RedisServer, tier: &str) -> Vec<GatewayProcess> {
    let pre = format!("[cache]\nredis = {{ url = \"{}\"{tier} }}\n", redis.url());
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(gw(o, "cache = {}", &pre).await);
    }
    for g in &gws {
        assert!(
            eventually(Duration::from_secs(10), || async {
                g.admin_get("/cache").await.contains("\"up\":true")
            })
            .await,
            "an instance reaches redis"
        );
    }
    gws
}

/// Waits (bounded) until the object of `path` is in Redis.
async fn reaches_redis(redis: &RedisServer, path: &str) {
    let key = format!("scalegate:cache:127.0.0.1{path}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis
                .command(&["EXISTS", &key])
                .await
                .is_some_and(|r| r.starts_with(":1"))
        })
        .await,
        "{key} reached redis"
    );
}

/// Stores `paths` through the first instance, waits until Redis has them, then reads them
/// through the others (from Redis): every instance holds every path, the origin asked once.
async fn warm(gws: &[GatewayProcess], redis: &RedisServer, o: &Origin, paths: &[String]) {
    for p in paths {
        assert_eq!(get(&gws[0], p, &[]).await.body, format!("{p} #1"));
    }
    for p in paths {
        reaches_redis(redis, p).await;
    }
    for g in gws {
        for p in paths {
            let r = get(g, p, &[]).await;
            assert!(is_hit(&r), "{p}: {}", status(&r));
            assert_eq!(r.body, format!("{p} #1"));
        }
    }
    for p in paths {
        assert_eq!(o.hits(p), 1, "{p}");
    }
}

/// Waits (bounded) until no instance serves the first version of any of `paths`; returns how
/// long that took.
async fn all_purged(gws: &[GatewayProcess], paths: &[String]) -> Duration {
    let start = Instant::now();
    let gone = eventually(Duration::from_secs(10), || async {
        for g in gws {
            for p in paths {
                if get(g, p, &[]).await.body == format!("{p} #1") {
                    return false;
                }
            }
        }
        true
    })
    .await;
    assert!(gone, "every instance purged {paths:?}");
    start.elapsed()
}

fn paths(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn url_prefix_and_tag_purges_reach_three_instances_past_a_million_unrelated_keys() {
    let redis = RedisServer::start().await;
    fill_unrelated(&redis, 1_000_000).await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let url = vec!["/u/a".to_string()];
    let prefixed = paths("/p/", 50);
    let tagged = paths("/t/", 30);
    let all: Vec<String> = [url.clone(), prefixed.clone(), tagged.clone()].concat();
    warm(&gws, &redis, &o, &all).await;
    for (query, purged) in [
        ("url=/u/a", &url),
        ("prefix=/p/", &prefixed),
        ("tag=news", &tagged),
    ] {
        let sent = Instant::now();
        let r = purge(&gws[0], query).await;
        let answered = sent.elapsed();
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        assert!(
            r.body.contains(&format!("\"redis_keys\":{}", purged.len())),
            "{query}: {}",
            r.body
        );
        assert!(r.body.contains("\"subscribers\":3"), "{query}: {}", r.body);
        let everywhere = all_purged(&gws, purged).await;
        eprintln!("{query}: answered in {answered:?}, all three missed after {everywhere:?}");
    }
    // What was not purged is still served from the cache everywhere.
    for g in &gws {
        assert!(is_hit(&get(g, "/p/1", &[]).await));
    }
    for g in &gws {
        quiescent(g).await;
    }
}

/// A successful POST through one instance must not leave the old version in the others'
/// memory (before: it purged only its own memory and Redis, and the two other instances served
/// the stale copy until it expired). The others are told with a plain message, not through the
/// purge stream.
#[tokio::test]
async fn an_unsafe_request_through_one_instance_invalidates_every_instance() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let items = vec!["/u/items".to_string()];
    warm(&gws, &redis, &o, &items).await;
    let post = Client::http1()
        .post_with(gws[0].http, "/u/items", &[])
        .await
        .expect("post");
    assert_eq!(post.status, 200);
    let everywhere = all_purged(&gws, &items).await;
    eprintln!("all three missed {everywhere:?} after the POST");
    // Invalidations are not kept in the purge stream: writes must not push admin purges out of
    // what a resubscribing instance replays.
    let kept = redis.command(&["XLEN", "scalegate:cache:purges"]).await;
    assert_eq!(kept.as_deref().map(str::trim), Some(":0"), "{kept:?}");
    // The new version is cached again and served everywhere (no purge loop).
    reaches_redis(&redis, "/u/items").await;
    for g in &gws {
        assert!(
            eventually(Duration::from_secs(10), || async {
                is_hit(&get(g, "/u/items", &[]).await)
            })
            .await,
            "cached again"
        );
    }
    for g in &gws {
        quiescent(g).await;
    }
}

#[tokio::test]
async fn a_purge_while_redis_pauses_is_applied_or_refused_never_200_and_stale() {
    let redis = RedisServer::start().await;
    fill_unrelated(&redis, 1_000_000).await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let short = paths("/short/", 10);
    let long = paths("/long/", 10);
    warm(&gws, &redis, &o, &[short.clone(), long.clone()].concat()).await;
    // A 200 ms pause: a request on the first instance times out on Redis (starting its
    // hold-off), and the purge right after it still goes through.
    redis.command(&["CLIENT", "PAUSE", "200"]).await;
    let r = get(&gws[0], "/miss-during-pause", &[]).await;
    assert_eq!(r.status, 200);
    let r = purge(&gws[0], "prefix=/short/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = all_purged(&gws, &short).await;
    eprintln!("after a 200 ms pause: all three missed after {t:?}");
    // A 1 s pause is within a purge's 2 s budget (the Redis client's own 500 ms response
    // timeout cut it short, and the purge answered 503).
    let mid = paths("/mid/", 3);
    warm(&gws, &redis, &o, &mid).await;
    redis.command(&["CLIENT", "PAUSE", "1000"]).await;
    let r = purge(&gws[0], "prefix=/mid/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    all_purged(&gws, &mid).await;
    // A pause longer than a purge's budget: the API says what failed, and the retry applies
    // it everywhere once Redis answers again.
    redis.command(&["CLIENT", "PAUSE", "3000"]).await;
    let r = purge(&gws[0], "prefix=/long/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("\"retrying\":true"), "{}", r.body);
    assert!(r.body.contains("timed out"), "{}", r.body);
    let t = all_purged(&gws, &long).await;
    eprintln!("after a 3 s pause: all three missed {t:?} after the 503");
    assert!(
        eventually(Duration::from_secs(10), || async {
            gws[0]
                .admin_get("/cache")
                .await
                .contains("\"purges_retrying\":0")
        })
        .await
    );
    for g in &gws {
        quiescent(g).await;
    }
}

#[tokio::test]
async fn fills_made_while_redis_pauses_reach_it_afterwards() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    // Reads from Redis may take their time on a busy machine: one given up counts as a miss,
    // and the origin would be asked again.
    let gws = three_with(&o, &redis, ", timeout = \"2s\"").await;
    let fills = paths("/fill/", 200);
    redis.command(&["CLIENT", "PAUSE", "500"]).await;
    for p in &fills {
        assert_eq!(get(&gws[0], p, &[]).await.body, format!("{p} #1"));
    }
    // Every fill reaches Redis: the second instance serves each without asking the origin.
    for p in &fills {
        reaches_redis(&redis, p).await;
        assert_eq!(get(&gws[1], p, &[]).await.body, format!("{p} #1"));
        assert_eq!(o.hits(p), 1, "{p}");
    }
    let view = gws[0].admin_get("/cache").await;
    assert!(view.contains("\"dropped_fills\":0"), "{view}");
    for g in &gws {
        quiescent(g).await;
    }
}

#[tokio::test]
async fn a_purge_published_while_subscriptions_are_down_is_replayed_on_resubscribe() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let dropped = paths("/dropped/", 10);
    warm(&gws, &redis, &o, &dropped).await;
    // Every instance loses its subscription; the purge is published before they are back.
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        killed.as_deref().is_some_and(|r| r.starts_with(':')),
        "{killed:?}"
    );
    let r = purge(&gws[0], "prefix=/dropped/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = all_purged(&gws, &dropped).await;
    eprintln!("replayed from the stream: all three missed after {t:?}");
    for g in &gws {
        quiescent(g).await;
    }
}

#[tokio::test]
async fn a_purge_while_redis_is_down_is_refused_and_applied_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let down = paths("/down/", 10);
    warm(&gws, &redis, &o, &down).await;
    redis.kill();
    let r = purge(&gws[0], "tag=other").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("\"retrying\":true"), "{}", r.body);
    // The other instances still hold their copies; the retry reaches them once Redis is back
    // (empty: the restart lost every key and the purge stream).
    assert!(redis.restart().await, "redis back");
    let t = all_purged(&gws, &down).await;
    eprintln!("redis restarted: all three missed {t:?} after it answered");
    for g in &gws {
        quiescent(g).await;
    }
}

#[tokio::test]
async fn a_purge_whose_admin_client_hangs_up_still_completes() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start().await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let left = paths("/left/", 5);
    warm(&gws, &redis, &o, &left).await;
    redis.command(&["CLIENT", "PAUSE", "1000"]).await;
    // The client sends the purge and leaves while it waits for Redis.
    let mut s = tokio::net::TcpStream::connect(gws[0].admin)
        .await
        .expect("connect");
    let req = format!(
        "POST /cache/purge?prefix=/left/ HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let t = all_purged(&gws, &left).await;
    eprintln!("client gone: all three missed after {t:?}");
    for g in &gws {
        quiescent(g).await;
    }
}

/// Found from outside: a purge answered 503 "retrying" was dropped without a word when a
/// reload changed `[cache]` (the retries lived in the store the reload replaced), and the stale
/// object stayed in Redis and on the other instances. The new store takes the retries over.
#[tokio::test]
async fn a_purge_being_retried_survives_a_reload_that_replaces_the_store() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let mut gws = three(&o, &redis).await;
    let (first, rewrite) = reloadable(&o, &redis).await;
    let reloaded = paths("/reload/", 5);
    gws[0] = first;
    warm(&gws, &redis, &o, &reloaded).await;
    redis.command(&["CLIENT", "PAUSE", "3000"]).await;
    let r = purge(&gws[0], "prefix=/reload/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("\"retrying\":true"), "{}", r.body);
    // A reload that changes [cache] while the purge waits for its retry.
    gws[0].write_config(&rewrite(32));
    let reloaded_ok = eventually(Duration::from_secs(10), || async {
        gws[0]
            .admin_get("/cache")
            .await
            .contains(&(32u64 << 20).to_string())
    })
    .await;
    assert!(reloaded_ok, "the reload took effect");
    let t = all_purged(&gws, &reloaded).await;
    eprintln!("after a reload during the retry: all three missed {t:?}");
    for g in &gws {
        quiescent(g).await;
    }
}

/// Found from outside: every reload that changed `[cache]` left the replaced store's purge
/// subscription behind, so a purge reported more subscribers than instances (the figure
/// meant to reveal a missing one). A replaced store's subscription now ends.
#[tokio::test]
async fn a_reload_that_replaces_the_store_leaves_no_subscription_behind() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let (g, rewrite) = reloadable(&o, &redis).await;
    let numsub = || async {
        let r = redis
            .command(&["PUBSUB", "NUMSUB", "scalegate:purge"])
            .await
            .unwrap_or_default();
        r.lines().last().unwrap_or_default().trim().to_string()
    };
    assert!(eventually(Duration::from_secs(10), || async { numsub().await == ":1" }).await);
    for mib in [32, 48, 16] {
        g.write_config(&rewrite(mib));
        let applied = eventually(Duration::from_secs(10), || async {
            g.admin_get("/cache")
                .await
                .contains(&(u64::from(mib) << 20).to_string())
        })
        .await;
        assert!(applied, "reload to {mib} MiB");
    }
    let one = eventually(Duration::from_secs(10), || async { numsub().await == ":1" }).await;
    assert!(one, "subscriptions left: {}", numsub().await);
    quiescent(&g).await;
}

/// One instance whose `[cache]` (Redis tier, `max_bytes` in MiB) sits in the reloadable part of
/// its config, with what to write for another size.
async fn reloadable(
    o: &Origin,
    redis: &RedisServer,
) -> (GatewayProcess, impl Fn(u32) -> String + use<>) {
    let routes = format!(
        "[[routes]]\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\ncache = {{}}\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\npassive = {{ consecutive_failures = 0 }}\n",
        o.addr
    );
    let url = redis.url();
    let config = move |mib: u32| {
        format!("{routes}[cache]\nredis = {{ url = \"{url}\" }}\nmax_bytes = \"{mib}MiB\"\n")
    };
    let g = GatewayProcess::start_custom(
        BIN,
        "[runtime]\nworker_threads = 2\n",
        &format!("token = \"{TOKEN}\""),
        "",
        &config(64),
    )
    .await;
    (g, config)
}

/// A probe's finding: a key under the cache's prefix holding another type (a string written by
/// some other program) made Redis answer WRONGTYPE. The tier took that for Redis being down on
/// every instance that filled the URL ("redis down; carrying on from memory alone" every few
/// seconds), and the in-order writer retried the refused fill for ever, so fills of every other
/// URL waited behind it and the other instances went to the origin for them. Now the refused
/// key is replaced by the fill and the tier stays up.
#[tokio::test]
async fn a_key_of_another_type_is_replaced_and_holds_no_other_fill_back() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let poisoned = "scalegate:cache:127.0.0.1/poison/1";
    assert!(
        redis
            .command(&["SET", poisoned, "not a hash"])
            .await
            .is_some_and(|r| r.starts_with("+OK"))
    );
    // Every instance looks the URL up and fills it: each meets the refusal.
    for (i, g) in gws.iter().enumerate() {
        let r = get(g, "/poison/1", &[]).await;
        assert!(r.body.starts_with("/poison/1 #"), "{i}: {}", r.body);
    }
    let others = paths("/after/", 5);
    for p in &others {
        assert_eq!(get(&gws[0], p, &[]).await.body, format!("{p} #1"));
    }
    // Before: none of these reached Redis while the poisoned key was there.
    // Before: the other instances took Redis for down and went to the origin.
    for p in &others {
        reaches_redis(&redis, p).await;
        for g in &gws[1..] {
            assert_eq!(get(g, p, &[]).await.body, format!("{p} #1"));
        }
        assert_eq!(o.hits(p), 1, "{p}");
    }
    let kind = redis.command(&["TYPE", poisoned]).await.unwrap_or_default();
    assert!(
        kind.starts_with("+hash"),
        "the fill replaced the key: {kind}"
    );
    for g in &gws {
        let view = g.admin_get("/cache").await;
        assert!(view.contains("\"up\":true"), "{view}");
        quiescent(g).await;
    }
}

/// A regression hunt's finding on the fix above: an index key of another type made every fill
/// "dropped" (and, to repair it, deleted the URL's hash, other instances' variants with it),
/// and a prefix purge answered 503 and was retried for as long as the key was there. The keys
/// of another type are now removed, and only those: fills reach Redis and the purge is applied.
#[tokio::test]
async fn an_index_key_of_another_type_is_replaced_and_purges_go_through() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let gws = three(&o, &redis).await;
    let index = "scalegate:cache:idx:path";
    assert!(
        redis
            .command(&["SET", index, "garbage"])
            .await
            .is_some_and(|r| r.starts_with("+OK"))
    );
    let fills = paths("/ix/", 3);
    for p in &fills {
        assert_eq!(get(&gws[0], p, &[]).await.body, format!("{p} #1"));
    }
    for p in &fills {
        reaches_redis(&redis, p).await;
        assert_eq!(get(&gws[1], p, &[]).await.body, format!("{p} #1"));
    }
    let kind = redis.command(&["TYPE", index]).await.unwrap_or_default();
    assert!(kind.starts_with("+zset"), "the index is one again: {kind}");
    let view = gws[0].admin_get("/cache").await;
    assert!(view.contains("\"dropped_fills\":0"), "{view}");
    // Before: 503 retrying, for as long as the key was there.
    let r = purge(&gws[0], "prefix=/ix/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    all_purged(&gws, &fills).await;
    for g in &gws {
        quiescent(g).await;
    }
}

/// A probe's finding: once an instance held one variant of a URL in memory, a request for
/// another variant went to the origin although Redis had it from another instance (Redis was
/// asked only when memory had nothing for the URL). Memory's vary-miss now looks in Redis too.
#[tokio::test]
async fn a_second_variant_stored_by_another_instance_is_read_from_redis() {
    let redis = RedisServer::start().await;
    let o = Origin::start(|req, n| {
        let v = req
            .headers
            .get("x-v")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        resp(
            200,
            &[("cache-control", "max-age=3600"), ("vary", "x-v")],
            &format!("{} {v} #{n}", req.uri.path()),
        )
    })
    .await;
    let gws = three(&o, &redis).await;
    // The first variant is stored through one instance and read by the second (from Redis);
    // only then is the second variant stored, through the first instance.
    assert_eq!(
        get(&gws[0], "/v/1", &[("x-v", "a")]).await.body,
        "/v/1 a #1"
    );
    reaches_redis(&redis, "/v/1").await;
    assert_eq!(
        get(&gws[1], "/v/1", &[("x-v", "a")]).await.body,
        "/v/1 a #1"
    );
    assert_eq!(
        get(&gws[0], "/v/1", &[("x-v", "b")]).await.body,
        "/v/1 b #2"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis
                .command(&["HLEN", "scalegate:cache:127.0.0.1/v/1"])
                .await
                .is_some_and(|r| r.starts_with(":3"))
        })
        .await,
        "both variants (and the Vary field) reached redis"
    );
    // The second instance, holding the first variant, is asked for the second.
    let b = get(&gws[1], "/v/1", &[("x-v", "b")]).await;
    // Before: "/v/1 b #3", fetched from the origin again.
    assert_eq!(b.body, "/v/1 b #2", "{}", status(&b));
    assert_eq!(o.hits("/v/1"), 2);
    for g in &gws {
        quiescent(g).await;
    }
}
