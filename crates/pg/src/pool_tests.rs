//! Unit tests of the pool's own counts (no server needed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::*;
use crate::spec::{DatabaseSpec, PgSpec, PoolMode, ServerSpec};

/// A database of one (unreachable) host with `pool_size` connections.
fn database(pool_size: usize) -> DatabaseSpec {
    DatabaseSpec {
        name: "app".into(),
        primary: ServerSpec {
            host: "127.0.0.1".into(),
            port: 1,
            dbname: "app".into(),
            user: None,
            password: None,
            sslmode: Default::default(),
            sslrootcert: None,
        },
        replicas: Vec::new(),
        pool_mode: PoolMode::Transaction,
        pool_size,
        min_idle: 0,
        max_lag_bytes: 0,
        max_lag: Duration::from_secs(5),
        health_interval: Duration::from_secs(1),
        shards: Vec::new(),
        sharding: None,
        on_session_state: Default::default(),
    }
}

fn pool(pool_size: usize) -> Pool {
    let db = database(pool_size);
    let topology = Arc::new(Topology::new(&db, None));
    let spec = PgSpec::new("127.0.0.1:0".parse().expect("address"), vec![db.clone()]);
    Pool::new(
        Arc::new(db),
        "app",
        &spec,
        Arc::new(AtomicU64::new(1)),
        topology,
    )
}

#[tokio::test]
async fn a_wait_given_up_is_no_longer_counted_as_waiting() {
    let pool = pool(1);
    let _busy = pool.hosts[0]
        .permits
        .clone()
        .try_acquire_owned()
        .expect("the only permit");
    // The client waiting for a server goes away: its wait is dropped mid-way.
    let mut timer = crate::wait_timer::WaitTimer::default();
    let wait = pool.permit(0, crate::clock::Coarse::now(), &mut timer);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), wait)
            .await
            .is_err()
    );
    assert_eq!(pool.stats.waiting.load(Relaxed), 0, "still counted waiting");
}

#[test]
fn a_loan_dropped_gives_back_its_counts() {
    let pool = pool(2);
    let lent = Lent::new(&pool.stats, &pool.topology, 0);
    assert_eq!(pool.stats.active.load(Relaxed), 1);
    assert_eq!(pool.topology.hosts[0].outstanding.load(Relaxed), 1);
    drop(lent);
    assert_eq!(pool.stats.active.load(Relaxed), 0);
    assert_eq!(pool.topology.hosts[0].outstanding.load(Relaxed), 0);
}

#[test]
fn an_open_connection_is_counted_until_it_is_dropped() {
    let pool = pool(2);
    let opened = Opened::new(&pool.stats);
    assert_eq!(pool.stats.open.load(Relaxed), 1);
    // Dropped anywhere: with a lease, in a ping given up, by the reaper.
    drop(opened);
    assert_eq!(pool.stats.open.load(Relaxed), 0);
}
