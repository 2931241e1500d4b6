//! The servers behind one virtual database: who is primary, which replicas may serve reads and
//! how far behind each one is. A monitor task (only when replicas are configured) asks every
//! host `pg_is_in_recovery()` and its WAL position each health interval; the primary is the host
//! not in recovery (sticky: it stays primary while it stays so), replica lag is the primary's
//! current LSN minus the replica's replay LSN, and seconds behind its last replayed commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::server::ServerConn;
use crate::spec::{DatabaseSpec, ServerSpec};

/// A host's role as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not checked yet.
    Unknown,
    /// Accepts writes.
    Primary,
    /// In recovery (a standby).
    Replica,
    /// Unreachable at the last check.
    Down,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Primary,
            2 => Role::Replica,
            3 => Role::Down,
            _ => Role::Unknown,
        }
    }

    /// Lower-case name for the console.
    pub fn name(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Down => "down",
        }
    }
}

/// One server of a database.
#[derive(Debug)]
pub struct Host {
    /// Where and how to log in.
    pub spec: ServerSpec,
    role: AtomicU8,
    /// Current LSN (primary) or replay LSN (replica), as bytes since 0/0.
    pub lsn: AtomicU64,
    /// Bytes of WAL not yet replayed (replicas).
    pub lag_bytes: AtomicU64,
    /// Milliseconds behind the last replayed commit when WAL is waiting (replicas).
    pub lag_ms: AtomicU64,
    /// Server connections of this host handed out now.
    pub outstanding: AtomicUsize,
    /// Transactions served (per-shard counters show hot shards).
    pub xacts: AtomicU64,
}

impl Host {
    /// The role as last seen.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Relaxed))
    }

    fn set_role(&self, r: Role) {
        let v = match r {
            Role::Unknown => 0,
            Role::Primary => 1,
            Role::Replica => 2,
            Role::Down => 3,
        };
        self.role.store(v, Relaxed);
    }
}

/// All hosts of one database and the routing limits.
#[derive(Debug)]
pub struct Topology {
    /// The configured primary first, then the replicas.
    pub hosts: Vec<Arc<Host>>,
    primary: AtomicUsize,
    /// A replica further behind than this many bytes gets no reads.
    pub max_lag_bytes: u64,
    /// A replica further behind than this gets no reads.
    pub max_lag: Duration,
    /// How often the monitor looks.
    pub interval: Duration,
    /// The hosts are shards, not a primary and its replicas.
    pub sharded: bool,
    /// Timeline of each host at the last check (primaries only).
    timelines: Vec<AtomicU64>,
    /// More than one host claimed to be primary at the last check.
    conflict: std::sync::atomic::AtomicBool,
}

const NO_PRIMARY: usize = usize::MAX;

/// What one check of a host found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Current or replay LSN.
    pub lsn: u64,
    /// Seconds behind (replicas), in milliseconds.
    pub lag_ms: u64,
    /// The timeline a host not in recovery writes on (0 for replicas).
    pub timeline: u32,
}

impl Topology {
    /// The hosts of `db`, with `password` for hosts whose URL has none. Until the first check
    /// the configured primary is taken as primary and replicas get no reads.
    pub fn new(db: &DatabaseSpec, password: Option<String>) -> Topology {
        let mut hosts = Vec::new();
        let sharded = !db.shards.is_empty();
        let servers: Vec<&ServerSpec> = if sharded {
            db.shards.iter().collect()
        } else {
            std::iter::once(&db.primary).chain(&db.replicas).collect()
        };
        for (i, s) in servers.into_iter().enumerate() {
            let mut spec = s.clone();
            if spec.password.is_none() {
                spec.password.clone_from(&password);
            }
            let h = Host {
                spec,
                role: AtomicU8::new(0),
                lsn: AtomicU64::new(0),
                lag_bytes: AtomicU64::new(0),
                lag_ms: AtomicU64::new(0),
                outstanding: AtomicUsize::new(0),
                xacts: AtomicU64::new(0),
            };
            // Shards are each their own primary; replicas are unknown until checked.
            h.set_role(if i == 0 || sharded {
                Role::Primary
            } else {
                Role::Unknown
            });
            hosts.push(Arc::new(h));
        }
        // With replicas, the primary is whoever the first check finds (a configured primary
        // that came back after a failover must not take writes), so writes wait for it.
        let replicated = hosts.len() > 1 && !sharded;
        if replicated && let Some(h) = hosts.first() {
            h.set_role(Role::Unknown);
        }
        Topology {
            timelines: hosts.iter().map(|_| AtomicU64::new(0)).collect(),
            conflict: Default::default(),
            hosts,
            primary: AtomicUsize::new(if replicated { NO_PRIMARY } else { 0 }),
            max_lag_bytes: db.max_lag_bytes,
            max_lag: db.max_lag,
            interval: db.health_interval,
            sharded,
        }
    }

    /// Whether reads may go elsewhere than the primary.
    pub fn has_replicas(&self) -> bool {
        self.hosts.len() > 1 && !self.sharded
    }

    /// Takes host `i` out of rotation until the monitor sees it again (it refused a connection).
    pub fn mark_down(&self, i: usize) {
        if let Some(h) = self.hosts.get(i)
            && i != self.primary.load(Relaxed)
        {
            h.set_role(Role::Down);
        }
    }

    /// The host writes go to, if one is known.
    pub fn primary(&self) -> Option<usize> {
        match self.primary.load(Relaxed) {
            NO_PRIMARY => None,
            i => Some(i),
        }
    }

    /// The replica for a read that must see `min_lsn`: within the lag limits, caught up to
    /// `min_lsn`, fewest server connections in use. None: use the primary.
    pub fn replica_for(&self, min_lsn: u64) -> Option<usize> {
        let max_ms = self.max_lag.as_millis() as u64;
        self.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                h.role() == Role::Replica
                    && h.lag_bytes.load(Relaxed) <= self.max_lag_bytes
                    && h.lag_ms.load(Relaxed) <= max_ms
                    && h.lsn.load(Relaxed) >= min_lsn
            })
            .min_by_key(|(_, h)| h.outstanding.load(Relaxed))
            .map(|(i, _)| i)
    }

    /// Records one round of checks (`None`: the host did not answer) and decides the primary:
    /// of the hosts not in recovery, the one on the newest timeline (a former primary that
    /// came back after a failover is on an older one), the current one on a tie.
    pub fn update(&self, seen: &[Option<Observation>]) {
        for ((h, o), tl) in self.hosts.iter().zip(seen).zip(&self.timelines) {
            match o {
                None => h.set_role(Role::Down),
                Some(o) => {
                    h.set_role(if o.in_recovery {
                        Role::Replica
                    } else {
                        Role::Primary
                    });
                    h.lsn.store(o.lsn, Relaxed);
                    h.lag_ms.store(o.lag_ms, Relaxed);
                    tl.store(u64::from(o.timeline), Relaxed);
                }
            }
        }
        let current = self.primary.load(Relaxed);
        let claims: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].role() == Role::Primary)
            .collect();
        let timeline = |i: usize| self.timelines[i].load(Relaxed);
        let newest = claims.iter().map(|&i| timeline(i)).max();
        let next = if claims.contains(&current) && Some(timeline(current)) == newest {
            current
        } else {
            claims
                .iter()
                .copied()
                .find(|&i| Some(timeline(i)) == newest)
                .unwrap_or(NO_PRIMARY)
        };
        let conflict = claims.len() > 1;
        if conflict != self.conflict.swap(conflict, Relaxed) && conflict {
            let who: Vec<String> = claims
                .iter()
                .map(|&i| {
                    let h = &self.hosts[i].spec;
                    format!("{}:{} (timeline {})", h.host, h.port, timeline(i))
                })
                .collect();
            tracing::warn!(
                claims = %who.join(", "),
                "more than one host claims to be primary; writes go to the newest timeline only"
            );
        }
        // A host that claims primary but is not the one chosen takes no reads either.
        for &i in &claims {
            if i != next {
                self.hosts[i].set_role(Role::Down);
            }
        }
        if next != current {
            match self.hosts.get(next) {
                Some(h) => {
                    tracing::warn!(host = %format!("{}:{}", h.spec.host, h.spec.port), "new primary")
                }
                None => tracing::warn!("no primary reachable: writes wait"),
            }
            self.primary.store(next, Relaxed);
        }
        let primary_lsn = self.hosts.get(next).map_or(0, |h| h.lsn.load(Relaxed));
        for h in &self.hosts {
            if h.role() == Role::Replica {
                h.lag_bytes
                    .store(primary_lsn.saturating_sub(h.lsn.load(Relaxed)), Relaxed);
            }
        }
    }

    /// Checks every host each interval until the task is dropped.
    pub async fn monitor(self: Arc<Self>) {
        let mut conns: Vec<Option<ServerConn>> = self.hosts.iter().map(|_| None).collect();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut seen = Vec::with_capacity(self.hosts.len());
            for (h, slot) in self.hosts.iter().zip(conns.iter_mut()) {
                seen.push(check(h, slot, self.interval.max(Duration::from_secs(1))).await);
            }
            self.update(&seen);
        }
    }
}

const CHECK_SQL: &str = "SELECT pg_is_in_recovery()::text, \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END \
     - '0/0'::pg_lsn)::bigint::text, \
    (CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
     THEN 0 ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000, 0) \
     END)::bigint::text, \
    CASE WHEN pg_is_in_recovery() THEN '' \
     ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END";

async fn check(h: &Host, slot: &mut Option<ServerConn>, timeout: Duration) -> Option<Observation> {
    if slot.is_none() {
        let user = h.spec.user.clone().unwrap_or_else(|| "postgres".into());
        *slot = ServerConn::connect(&h.spec, &user, timeout, 0).await.ok();
    }
    let conn = slot.as_mut()?;
    let row = match tokio::time::timeout(timeout, conn.query_row(CHECK_SQL)).await {
        Ok(Ok(r)) => r,
        _ => {
            *slot = None;
            return None;
        }
    };
    let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    Some(Observation {
        in_recovery: field(0) == "true",
        lsn: field(1).parse().unwrap_or(0),
        lag_ms: field(2).parse().unwrap_or(0),
        timeline: u32::from_str_radix(&field(3), 16).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PoolMode;

    fn server(port: u16) -> ServerSpec {
        ServerSpec {
            host: "127.0.0.1".into(),
            port,
            dbname: "x".into(),
            user: None,
            password: None,
            sslmode: Default::default(),
            sslrootcert: None,
        }
    }

    fn topo() -> Topology {
        let db = DatabaseSpec {
            name: "x".into(),
            primary: server(1),
            replicas: vec![server(2), server(3)],
            pool_mode: PoolMode::Transaction,
            pool_size: 2,
            min_idle: 0,
            max_lag_bytes: 1000,
            max_lag: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
            shards: Vec::new(),
            sharding: None,
            on_session_state: Default::default(),
        };
        Topology::new(&db, None)
    }

    fn obs(in_recovery: bool, lsn: u64) -> Option<Observation> {
        Some(Observation {
            in_recovery,
            lsn,
            lag_ms: 0,
            timeline: if in_recovery { 0 } else { 1 },
        })
    }

    fn primary_on(timeline: u32, lsn: u64) -> Option<Observation> {
        Some(Observation {
            in_recovery: false,
            lsn,
            lag_ms: 0,
            timeline,
        })
    }

    #[test]
    fn replicas_serve_reads_only_once_seen_and_within_lag() {
        let t = topo();
        assert_eq!(t.primary(), None, "no writes before the first check");
        assert_eq!(t.replica_for(0), None, "unchecked replicas get no reads");
        t.update(&[obs(false, 10_000), obs(true, 9_500), obs(true, 5_000)]);
        assert_eq!(t.replica_for(0), Some(1), "host 3 lags 5000 bytes > 1000");
        assert_eq!(
            t.replica_for(9_600),
            None,
            "read-your-writes: nobody has replayed 9600 yet"
        );
        t.hosts[1].outstanding.store(5, Relaxed);
        t.update(&[obs(false, 10_000), obs(true, 10_000), obs(true, 9_900)]);
        assert_eq!(t.replica_for(0), Some(2), "least outstanding");
    }

    #[test]
    fn failover_moves_the_primary_and_sticks() {
        let t = topo();
        t.update(&[obs(false, 100), obs(true, 100), obs(true, 100)]);
        t.update(&[None, obs(true, 100), obs(true, 100)]);
        assert_eq!(t.primary(), None, "no host accepts writes: none is primary");
        t.update(&[None, obs(false, 200), obs(true, 100)]);
        assert_eq!(t.primary(), Some(1));
        // The old primary comes back still thinking it is primary: the new one stays.
        t.update(&[obs(false, 150), obs(false, 300), obs(true, 300)]);
        assert_eq!(t.primary(), Some(1));
        assert_eq!(t.replica_for(0), Some(2));
    }

    #[test]
    fn of_two_primaries_the_newer_timeline_wins_even_at_start() {
        // A fresh pooler: the configured primary is back on timeline 1, the promoted replica
        // writes on timeline 2.
        let t = topo();
        t.update(&[primary_on(1, 500), primary_on(2, 300), obs(true, 300)]);
        assert_eq!(t.primary(), Some(1));
        assert_eq!(
            t.hosts[0].role(),
            Role::Down,
            "the stale primary takes nothing"
        );
        // Still two claims next round: the decision holds.
        t.update(&[primary_on(1, 500), primary_on(2, 400), obs(true, 400)]);
        assert_eq!(t.primary(), Some(1));
    }
}
