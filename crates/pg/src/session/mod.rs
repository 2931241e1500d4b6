//! One client connection after login: messages flow to a server connection from the pool and
//! responses flow back. In transaction mode the server goes back to the pool at every
//! ReadyForQuery that finds it idle with nothing in flight; named prepared statements and
//! session settings are carried across server connections (see `stmt` and `settings`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::stream::ClientStream;

use crate::classify::Class;
mod batch;
mod bound_settings;
mod fan_out;
mod held_settings;
mod local_parse;
mod merge;
mod reload;
mod replay;
mod replica_pin;
mod resend;
mod shape_check;
mod sharded;
mod split;
mod stale_plans;
mod state;

use crate::failure::Failure;
use crate::held::Waiting;
use crate::login::{self, LOGIN_TIMEOUT};
use crate::outgoing::{Out, Outgoing};
use crate::pool::{AcquireError, Lease, Pool, Route};
use crate::pooler::{ClientSlot, Pooler};
use crate::proto::{self, Severity};
use crate::server::SETTINGS_UNKNOWN;
use crate::settings::{Change, Settings};
use crate::spare;
use crate::spec::{OnSessionState, PoolMode};
use crate::stmt::{Action, Statements, Sub};
use crate::wait_timer::WaitTimer;
use replay::Replay;

/// Serves one client connection to the end.
pub async fn run(pooler: Arc<Pooler>, tcp: TcpStream, peer: SocketAddr) {
    let mut stream = ClientStream::Plain(tcp);
    let mut buf = BytesMut::with_capacity(8192);
    let startup = match tokio::time::timeout(
        LOGIN_TIMEOUT,
        login::startup(&mut stream, &mut buf, &pooler),
    )
    .await
    {
        Ok(Ok(Some(s))) => s,
        // A cancel request, handled: close cleanly (over TLS, with close_notify; libpq reports
        // an EOF without one as a failed cancel).
        Ok(Ok(None)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            return;
        }
        Ok(Err(refusal)) => return refusal.send(&mut stream).await,
        Err(_) => {
            return Failure::ConnectionLost("login timed out".into())
                .send(&mut stream)
                .await;
        }
    };
    if crate::console::is_console(&startup.database) {
        return crate::console::run(pooler, stream, buf, peer, startup).await;
    }
    let spec = pooler.spec();
    // Counted before it is checked, so concurrent logins cannot overshoot the limit.
    let Some(_counted) = ClientCount::take(&pooler.client_count, spec.max_client_conn) else {
        return Failure::TooMany(format!(
            "too many clients already (max_client_conn {})",
            spec.max_client_conn
        ))
        .send(&mut stream)
        .await;
    };
    // Authenticated first, as PostgreSQL does: which databases exist is not told to a client
    // that has not.
    let authed = tokio::time::timeout(
        LOGIN_TIMEOUT,
        login::authenticate(&mut stream, &mut buf, &pooler, &startup.user),
    )
    .await
    .unwrap_or_else(|_| Err(Failure::ConnectionLost("login timed out".into())));
    if let Err(refusal) = authed {
        return refusal.send(&mut stream).await;
    }
    let Some(db) = pooler.database(&startup.database) else {
        return Failure::NoDatabase(format!("database \"{}\" does not exist", startup.database))
            .send(&mut stream)
            .await;
    };
    if wants_replication(&startup) {
        return Failure::NotSupported(
            "replication connections are not pooled: connect to the server itself".into(),
        )
        .send(&mut stream)
        .await;
    }
    let pool = pooler.pool(&db, &startup.user);
    let params = pool.params.lock().map(|p| p.clone()).unwrap_or_default();
    let params = if params.is_empty() {
        // First client of this pool: log in to the server once to learn its parameters
        // (and to report a refused login to the client that caused it).
        match pool.acquire(Route::Any, &mut WaitTimer::default()).await {
            Ok(lease) => {
                let p = pool.client_params(&lease);
                pool.release(lease, true);
                p
            }
            Err(e) => {
                let _ = stream.write_all(&Failure::from(&e).fatal()).await;
                return;
            }
        }
    } else {
        params
    };

    let slot = Arc::new(ClientSlot {
        user: startup.user.clone(),
        database: startup.database.clone(),
        addr: peer,
        since: Instant::now(),
        server: std::sync::Mutex::new(None),
        cancels: Default::default(),
        queued: Default::default(),
        pinned: Default::default(),
        on_close: Default::default(),
    });
    let key = pooler.register(slot.clone());
    let mut out = BytesMut::new();
    login::parameter_statuses(&mut out, &params, &startup);
    proto::backend_key(&mut out, key.0, key.1);
    proto::ready(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        pooler.unregister(key);
        return;
    }
    pool.stats.clients.fetch_add(1, Relaxed);
    let settings = Settings::from_startup(&startup.params);
    let mut session = Session {
        max: spec.max_message_bytes,
        transaction: pool.mode() == PoolMode::Transaction,
        pooler: pooler.clone(),
        pool: pool.clone(),
        slot,
        client: stream,
        cbuf: buf,
        lease: None,
        split: transaction_mode_split(&pool),
        sharding: pool.db.sharding.clone(),
        deferred_begin: false,
        swallow_z: 0,
        swallow_lone_z: 0,
        swallow_parse: 0,
        unnamed: None,
        begin_sql: String::new(),
        aside_sync: false,
        skip_to_sync: false,
        shard_txn_failed: false,
        copy_in: false,
        wrote: false,
        min_lsn: 0,
        stmts: Statements::default(),
        pin: state::Pin {
            bits: match settings.startup_temp_first() {
                true => crate::effects::state::OTHER,
                false => 0,
            },
            ..state::Pin::default()
        },
        resend: BytesMut::new(),
        resend_ok: false,
        resends: 0,
        fatal_forwarded: false,
        stale_plans: false,
        checking: None,
        setting_statements: Default::default(),
        bound_settings: Default::default(),
        refuse_state: pool.db.on_session_state == OnSessionState::Refuse
            || pool.db.sharding.is_some(),
        track: Track {
            settings,
            changes: Vec::new(),
            unknown: None,
            sent: 0,
            done: 0,
            segment_error: false,
            rolled_back: false,
            saw_rollback: false,
            saw_commit: false,
            chained: false,
            ambiguous: false,
            reread: Vec::new(),
            unknown_kept: false,
            read_all: false,
            path_now: None,
        },
        pending_z: 0,
        unsynced: false,
        status: b'I',
        to_server: BytesMut::new(),
        to_client: BytesMut::new(),
        idle_transaction_timeout: spec.idle_transaction_timeout,
        plain_first: 0,
        wait_timer: WaitTimer::default(),
    };
    let end = session.serve().await;
    session.finish(end).await;
    // The session's pool, which a reload may have changed.
    session.pool.stats.clients.fetch_sub(1, Relaxed);
    pooler.unregister(key);
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// Terminate or EOF from the client.
    Client,
    /// The server connection broke.
    ServerLost(String),
    /// Protocol violation or a fatal pool error, sent to the client before closing.
    Fatal(Failure),
    /// The pooler is shutting down and the client holds no server connection.
    Shutdown,
}

struct Session {
    pooler: Arc<Pooler>,
    pool: Arc<Pool>,
    slot: Arc<ClientSlot>,
    client: ClientStream,
    cbuf: BytesMut,
    max: usize,
    transaction: bool,
    lease: Option<Lease>,
    /// Reads may go to replicas (transaction mode with replicas configured).
    split: bool,
    /// The transaction holding the lease went to the primary as a write.
    wrote: bool,
    /// WAL position of this client's last write (read-your-writes).
    min_lsn: u64,
    /// Sharding rules when the database is sharded.
    sharding: Option<Arc<crate::sharding::ShardingSpec>>,
    /// The client sent BEGIN and no statement yet told which shard the transaction is on.
    deferred_begin: bool,
    /// ReadyForQuery messages still to swallow (answers to a BEGIN sent on the client's behalf).
    swallow_z: usize,
    /// ReadyForQuery messages to keep from the client while forwarding what precedes them
    /// (answers to a Sync or a refusal the pooler sent on its own).
    swallow_lone_z: usize,
    /// ParseCompletes to keep from the client (answers to an unnamed Parse the pooler sent
    /// ahead of a Bind on a server that never saw it).
    swallow_parse: usize,
    /// The client's last unnamed statement (Parse body), for routing a later Bind of it.
    unnamed: Option<bytes::Bytes>,
    /// The client's deferred BEGIN as it wrote it (isolation level, READ ONLY …).
    begin_sql: String,
    /// The batch being forwarded ran aside and ends with Flush: close it with our own Sync.
    aside_sync: bool,
    /// A Flush-ended batch was refused: the client's messages up to its Sync are dropped.
    skip_to_sync: bool,
    /// A statement of a deferred transaction was refused: only COMMIT/ROLLBACK are accepted.
    shard_txn_failed: bool,
    /// The server asked for COPY data (CopyInResponse seen, ReadyForQuery not yet).
    copy_in: bool,
    stmts: Statements,
    /// Session state holding this client on its server connection.
    pin: state::Pin,
    /// Session state is refused (0A000) rather than pinned.
    refuse_state: bool,
    /// Client bytes sent on the lease and not answered yet, while re-sending them is possible.
    resend: BytesMut,
    /// Nothing has been answered on this lease yet (a fresh transaction-mode lease).
    resend_ok: bool,
    /// Re-sends of the current batch.
    resends: u8,
    /// The server's own FATAL reached the client: the pooler adds none.
    fatal_forwarded: bool,
    /// The server said a prepared statement's plan went stale (stale_plans.rs).
    stale_plans: bool,
    /// The client's messages wait for the answer to a check of a statement's result type
    /// (shape_check.rs), sent in this segment.
    checking: Option<u64>,
    /// The client's prepared statements that change settings when they run (psycopg prepares
    /// a `SET` it runs often; asyncpg runs `set_config('jit', $1, false)`), by name (the
    /// unnamed one too), with their effects: each Bind of one records the change.
    setting_statements: bound_settings::SettingStatements,
    /// What Binds of those statements change once their portals run.
    bound_settings: bound_settings::BoundSettings,
    track: Track,
    pending_z: usize,
    unsynced: bool,
    status: u8,
    to_server: BytesMut,
    to_client: BytesMut,
    /// How long this client may sit in an open transaction without sending anything.
    idle_transaction_timeout: Option<std::time::Duration>,
    /// The length of the batch's first message when it is a simple query already found to
    /// have no effects beyond its transaction (0: none), so it is analysed once.
    plain_first: usize,
    /// The timer this client's waits for a server connection race.
    wait_timer: WaitTimer,
}

impl Session {
    async fn serve(&mut self) -> End {
        loop {
            if let Some(&tag) = self.cbuf.first()
                && !proto::is_frontend_tag(tag)
            {
                return End::Fatal(invalid_message(tag));
            }
            match proto::tagged_len(&self.cbuf, self.max) {
                Err(e) => return End::Fatal(e.into()),
                Ok(Some(_)) if !self.waits_for_batch() => {
                    if let Some(end) = self.client_messages().await {
                        return end;
                    }
                    continue;
                }
                Ok(Some(_)) => {}
                Ok(None) => {}
            }
            let held = self.holds_enough();
            let Some(lease) = self.lease.as_mut() else {
                if self.pooler.is_closing() {
                    return End::Shutdown;
                }
                tokio::select! {
                    biased;
                    r = read_client(&mut self.client, &mut self.cbuf) => match r {
                        Ok(0) | Err(_) => return End::Client,
                        Ok(n) => self.pool.stats.bytes_in.fetch_add(n as u64, Relaxed),
                    },
                    () = std::future::poll_fn(|cx| self.slot.poll_closing(&self.pooler, cx)) => {
                        return End::Shutdown;
                    }
                };
                continue;
            };
            // The client's turn inside a transaction: it may not keep the server forever.
            let idle_limit = self
                .idle_transaction_timeout
                .filter(|_| self.pending_z == 0 && !self.unsynced && self.status != b'I');
            let idle_too_long = async move {
                match idle_limit {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // Biased: polled in this order, without drawing a random number per wake-up. The
            // server first: its answer is what a client holding a server usually waits for,
            // and when it is there the client's socket is not polled (and re-registered) for
            // nothing. A client's bytes that arrive meanwhile are read on the next turn.
            tokio::select! {
                biased;
                r = lease.conn.stream.read_some(&mut lease.conn.buf) => match r {
                    // Closed without a word: the backend itself died (killed, crashed) under
                    // this batch, maybe because of it, so it is never sent again: a query that
                    // crashes its server would crash the cluster once per re-send.
                    Ok(0) => return End::ServerLost("the server closed the connection".into()),
                    Err(e) => return End::ServerLost(e.to_string()),
                    Ok(_) => {
                        if let Some(end) = self.server_messages().await {
                            return end;
                        }
                    }
                },
                // Messages held back for the server's answer: past the limit the client waits
                // (the kernel's buffers hold the rest), as PostgreSQL reads no more while busy.
                r = read_client(&mut self.client, &mut self.cbuf), if !held => match r {
                    Ok(0) | Err(_) => return End::Client,
                    Ok(n) => { self.pool.stats.bytes_in.fetch_add(n as u64, Relaxed); }
                },
                () = idle_too_long => {
                    return End::Fatal(Failure::IdleInTransaction);
                },
                () = std::future::poll_fn(|cx| self.slot.poll_stopping(&self.pooler, cx)) => {
                    return End::Shutdown;
                }
            }
        }
    }

    /// Handles every complete client message in the buffer.
    async fn client_messages(&mut self) -> Option<End> {
        self.plain_first = 0;
        let fresh = self.lease.is_none();
        if self.lease.is_some() {
            if let Some(end) = self.guard_settings().await {
                return Some(end);
            }
            if let Some(end) = self.guard_transaction().await {
                return end;
            }
            if let Some(end) = self.guard_replica_pin().await {
                return end;
            }
        } else {
            // A client that leaves holding no server needs none: taking one for its Terminate
            // would keep it waiting on a primary that is down (asyncpg's close() hung).
            if self.cbuf.first() == Some(&b'X') {
                return Some(End::Client);
            }
            if !self.drop_idle_flushes() {
                return None;
            }
            if let Some(end) = self.follow_reload() {
                return Some(end);
            }
            if let Some(end) = self.refuse_locally().await {
                return end;
            }
            if self.skip_to_sync {
                return self.skip_locally_to_sync().await;
            }
            if let Some(end) = self.parse_locally().await {
                return end;
            }
            if self.sharding.is_some() && self.lease.is_none() {
                match self.shard_decision() {
                    sharded::Decision::Shard(shard) => {
                        if let Err(e) = self.acquire_on(Route::Shard(shard)).await {
                            return self.acquire_failed(e).await;
                        }
                        self.lead_in();
                    }
                    sharded::Decision::Aside => {
                        if let Err(e) = self.acquire_on(Route::Any).await {
                            return self.acquire_failed(e).await;
                        }
                    }
                    // Boxed: a fan-out's future (3 KB) would size every session's.
                    other => return Box::pin(self.shard_locally(other)).await,
                }
            }
            if self.lease.is_none()
                && let Err(e) = self.acquire().await
            {
                return self.acquire_failed(e).await;
            }
        }
        if fresh && self.transaction && self.sharding.is_none() && self.pin.bits == 0 {
            // Until the server answers, this batch can go to another server if this one dies.
            resend::forget(&mut self.resend);
            self.resend_ok = true;
        }
        let routed = self.routed();
        let lease = self.lease.as_mut()?;
        let conn = &mut lease.conn;
        let mut consumed = 0;
        let mut terminated = false;
        let mut out = Outgoing::new(&mut self.to_server, &self.cbuf);
        loop {
            out.at(consumed);
            let rest = &self.cbuf[consumed..];
            let n = match proto::tagged_len(rest, self.max) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Some(End::Fatal(e.into())),
            };
            let msg = &rest[..n];
            let tag = msg[0];
            if !proto::is_frontend_tag(tag) {
                return Some(End::Fatal(invalid_message(tag)));
            }
            consumed += n;
            // The segment this message belongs to (ended by the next Sync, Query or FunctionCall).
            let segment = self.track.sent;
            match tag {
                // What came before the Terminate still runs, as on PostgreSQL: it is sent,
                // then the server connection is closed behind it (`finish`).
                b'X' if consumed > n => {
                    consumed -= n;
                    terminated = true;
                    break;
                }
                b'X' => return Some(End::Client),
                b'Q' | b'S' | b'F' => {
                    self.pending_z += 1;
                    self.track.sent += 1;
                    if tag == b'S' {
                        self.unsynced = false;
                    }
                }
                b'P' | b'B' | b'D' | b'E' | b'C' => self.unsynced = true,
                // A Flush leaves nothing unanswered, unless it is malformed: the server's error
                // then makes it skip everything up to the next Sync.
                b'H' if msg.len() > 5 => self.unsynced = true,
                _ => {}
            }
            // Session mode follows only what a reset would undo (held_settings.rs), for a
            // client with startup settings to come back to.
            let follows = self.transaction || self.track.settings.has_startup();
            let known_plain = consumed == n && self.plain_first == n;
            let text = statement_text(msg).filter(|_| follows && !known_plain);
            let fx = text.and_then(|(sql, _)| self.pooler.analyzer.effects(sql));
            if follows {
                bound_settings::follow(
                    (tag, msg, segment),
                    fx.as_ref(),
                    &mut self.setting_statements,
                    &mut self.bound_settings,
                    &mut self.track,
                );
            }
            if self.transaction {
                let mut sub = Sub::Forward;
                if let (Some((_, unnamed)), Some(fx)) = (text, fx) {
                    if let Some(path) = fx.search_path_change()
                        && (tag == b'Q' || unnamed)
                    {
                        self.track.path_now = Some((segment, path.map(str::to_string)));
                    }
                    sub = state::plan(
                        &fx,
                        (segment, unnamed, tag == b'Q'),
                        self.refuse_state,
                        &mut self.stmts,
                        &mut self.track,
                        &mut self.pin,
                        &mut conn.prepared,
                    );
                }
                if let Sub::Refuse(_) = sub {
                    self.pool.stats.refusals.fetch_add(1, Relaxed);
                }
                let (pool, scope) = (&self.pool, self.track.statement_scope());
                // No check once this segment failed: the server skips it, with everything up to
                // the client's Sync (which the check would hold back for good).
                let failed = self.track.segment_error && self.track.done == segment;
                let check = !(routed || failed);
                let bound = self.stmts.client_message(
                    msg,
                    &mut conn.prepared,
                    (
                        |b| pool.statement_id(b, scope.as_deref()),
                        |id| pool.lazy(id, check),
                    ),
                    &mut out,
                    sub,
                );
                // A statement the server lacks, whose result type clients were told: prepared
                // and described alone first, this message held until the answer (nothing of it
                // was written; shape_check.rs).
                if let Some((id, body)) = self.stmts.take_held() {
                    self.stmts
                        .check_shape(id, &body, &mut conn.prepared, &mut out);
                    consumed -= n;
                    self.checking = Some(segment);
                    self.unsynced = true;
                    break;
                }
                if bound != 0 {
                    state::bound(&mut self.pin, bound);
                }
            } else {
                if tag == b'Q'
                    && let Some(fx) = &fx
                {
                    state::record_settings(fx, segment, &mut self.track);
                }
                out.verbatim(msg);
            }
            // A routed session forwards one batch at a time: the next may go elsewhere.
            if routed && matches!(tag, b'S' | b'Q' | b'F' | b'H') {
                break;
            }
        }
        let r = conn.stream.send_all(out.bytes(consumed)).await;
        self.to_server.clear();
        spare::give(&mut self.to_server);
        self.count_pin();
        if let Err(e) = r {
            return Some(End::ServerLost(e.to_string()));
        }
        self.keep_for_resend(consumed);
        if terminated {
            return Some(End::Client);
        }
        self.close_aside().await
    }

    /// Moves the first `consumed` bytes of the client's buffer, handled and sent, out of it; kept
    /// while the batch may be sent again. A whole buffer becomes the re-send one: nothing is
    /// copied, and it goes back to the spares when the batch is answered.
    /// A batch past [`MAX_HELD`] is not kept: it goes on without a re-send, as it would after
    /// the server's first answer, so that it streams through instead of being held whole.
    fn keep_for_resend(&mut self, consumed: usize) {
        if self.resend_ok && self.resend.len() + consumed > MAX_HELD {
            self.resend_ok = false;
            resend::forget(&mut self.resend);
        }
        if !self.resend_ok {
            self.cbuf.advance(consumed);
        } else if self.resend.is_empty() && consumed == self.cbuf.len() {
            spare::give(&mut self.resend);
            self.resend = std::mem::take(&mut self.cbuf);
        } else {
            self.resend.extend_from_slice(&self.cbuf[..consumed]);
            self.cbuf.advance(consumed);
        }
    }

    /// Keeps the pool's pinned-clients gauge and SHOW CLIENTS in step with this client's state.
    fn count_pin(&mut self) {
        if self.slot.pinned.load(Relaxed) != self.pin.bits {
            self.slot.pinned.store(self.pin.bits, Relaxed);
        }
        let pinned = self.pin.bits != 0;
        if pinned != self.pin.counted {
            self.pin.counted = pinned;
            if pinned {
                self.pool.stats.pinned.fetch_add(1, Relaxed);
                self.pool.stats.pins.fetch_add(1, Relaxed);
            } else {
                self.pool.stats.pinned.fetch_sub(1, Relaxed);
            }
        }
    }

    /// In transaction mode, a simple query the pooler answers itself while the client holds no
    /// server connection (a refusal of session state, an emulated DEALLOCATE) is answered here
    /// without taking one.
    async fn refuse_locally(&mut self) -> Option<Option<End>> {
        if !self.transaction || self.cbuf.first() != Some(&b'Q') {
            return None;
        }
        let n = proto::tagged_len(&self.cbuf, self.max).ok()??;
        let mut out = BytesMut::new();
        if let Some(why) = malformed_query(&self.cbuf[5..n]) {
            // Text the pooler cannot read is not routed: refused as PostgreSQL refuses it.
            Failure::Protocol(why.into()).write(&mut out, proto::Severity::Error);
            return Some(self.answer_locally(n, out).await);
        }
        let (sql, _) = statement_text(&self.cbuf[..n])?;
        let Some(fx) = self.pooler.analyzer.effects(sql) else {
            // Nothing to answer here; the forward loop need not look at it again.
            self.plain_first = n;
            return None;
        };
        if fx.creates != 0 && self.refuse_state {
            self.pool.stats.refusals.fetch_add(1, Relaxed);
            state::refusal(&mut out, fx.creates);
            // Inside a (deferred) transaction the refusal fails it, as a server error would.
            self.shard_txn_failed |= self.deferred_begin;
        } else {
            match &fx.emulate {
                Some(crate::effects::Emulate::DeallocateAll) => {
                    self.stmts.forget_names();
                    state::complete(&mut out, "DEALLOCATE ALL");
                }
                Some(crate::effects::Emulate::Deallocate(name)) if self.stmts.forget_name(name) => {
                    state::complete(&mut out, "DEALLOCATE");
                }
                _ => return None,
            }
        }
        Some(self.answer_locally(n, out).await)
    }

    /// Answers the client's first `n` bytes (a simple query) with `out` and a ReadyForQuery.
    async fn answer_locally(&mut self, n: usize, mut out: BytesMut) -> Option<End> {
        let _ = self.cbuf.split_to(n);
        // Without a server the client is between transactions, unless a sharded BEGIN waits.
        let status = match (self.shard_txn_failed, self.deferred_begin) {
            (true, _) => b'E',
            (false, true) => b'T',
            (false, false) => b'I',
        };
        proto::ready(&mut out, status);
        match self.client.write_all(&out).await {
            Ok(()) => None,
            Err(_) => Some(End::Client),
        }
    }

    async fn acquire(&mut self) -> Result<(), AcquireError> {
        let (route, writes) = self.route();
        self.acquire_on(route).await?;
        self.wrote = writes;
        Ok(())
    }

    async fn acquire_on(&mut self, route: Route) -> Result<(), AcquireError> {
        self.wrote = false;
        let slot = self.slot.clone();
        let acquiring = slot.queued.acquiring();
        let lease = self.lease_on(route).await?;
        if let Ok(mut s) = self.slot.server.lock() {
            *s = Some((lease.conn.id, lease.conn.key));
        }
        drop(acquiring);
        if slot.queued.take_hit() {
            // A cancel came while the server was made ready: nothing of the statement has
            // been sent, so it ends here (57014), as a cancel of a waiting statement does.
            if let Ok(mut s) = self.slot.server.lock() {
                *s = None;
            }
            self.pool.release(lease, true);
            return Err(AcquireError::Cancelled);
        }
        self.lease = Some(lease);
        Ok(())
    }

    /// A server connection on `route` with this client's settings applied (waits out PAUSE,
    /// counted as waiting). A connection that dies while the settings are applied (nothing of
    /// the client's was sent on it) is replaced.
    async fn lease_on(&mut self, route: Route) -> Result<Lease, AcquireError> {
        // A client that hangs up while it waits gives up its place at once (the waits are
        // cancel-safe: their counts are guards), instead of being served a connection later.
        if self.pooler.is_paused() {
            let _waiting = Waiting::new(&self.pool.stats.waiting);
            let _oldest = self.pool.stats.oldest_wait.begin(Instant::now());
            tokio::select! {
                biased;
                () = self.pooler.wait_resumed() => {}
                () = self.client.closed() => return Err(AcquireError::ClientGone),
                () = self.slot.queued.cancelled() => return Err(AcquireError::Cancelled),
            }
        }
        let mut retries = replay::Retries::default();
        loop {
            let mut lease = tokio::select! {
                biased;
                got = self.pool.acquire(route, &mut self.wait_timer) => got?,
                () = self.client.closed() => return Err(AcquireError::ClientGone),
                () = self.slot.queued.cancelled() => return Err(AcquireError::Cancelled),
            };
            // Session mode too: the client's startup parameters are its session's (a
            // regression hunt's finding: `options='-c statement_timeout=5s'` was ignored).
            if lease.conn.settings != self.track.settings.fingerprint() {
                match self.replay(&mut lease, &mut retries).await {
                    Replay::Applied => {}
                    Replay::Again { reusable } => {
                        self.pool.release(lease, reusable);
                        continue;
                    }
                    Replay::Refused(e) => {
                        // The replay ran as one implicit transaction and was undone whole: the
                        // server still holds what its fingerprint says, so it goes back.
                        self.pool.release(lease, true);
                        return Err(e);
                    }
                }
            }
            return Ok(lease);
        }
    }

    /// Tells the client no server could be had, so that it stays in step: the statements it
    /// sent get their error and ReadyForQuery.
    async fn acquire_failed(&mut self, e: AcquireError) -> Option<End> {
        let failure = Failure::from(&e);
        match e {
            AcquireError::ClientGone => return Some(End::Client),
            // Nothing was consumed or answered: the batch starts over in the new pool (the
            // session loop calls `client_messages` again).
            AcquireError::Retired => return None,
            // PostgreSQL refuses a login whose settings it refuses.
            AcquireError::Settings { .. } => return Some(End::Fatal(failure)),
            _ => {}
        }
        // Inside a sharded transaction whose BEGIN waits for a shard, the error fails the
        // transaction, as a server's would: what follows gets 25P02 (`sharded.rs`), and its
        // COMMIT rolls back.
        let status = if self.deferred_begin {
            self.shard_txn_failed = true;
            b'E'
        } else {
            b'I'
        };
        // A cancel ends the statement it caught, not those pipelined after it, which wait
        // again; after a failed transaction's error the rest are answered by `sharded.rs`. A
        // refused wait answers every one: no server came for any.
        let first_only = matches!(e, AcquireError::Cancelled) || self.deferred_begin;
        let (mut syncs, mut whole, mut first) = (0, 0, 0);
        for (tag, msg) in proto::messages(&self.cbuf) {
            whole += msg.len();
            if matches!(tag, b'Q' | b'S' | b'F') {
                syncs += 1;
                if first == 0 {
                    first = whole;
                }
            }
        }
        let mut out = BytesMut::new();
        if syncs == 0 {
            // No Sync yet (a batch ended by Flush, as asyncpg prepares): the error goes now and
            // the client's messages up to its Sync are skipped, as PostgreSQL does after an
            // error; the connection stays usable. A message still arriving stays for the next
            // read.
            self.cbuf.advance(whole);
            self.skip_to_sync = true;
            failure.write(&mut out, Severity::Error);
        } else if first_only {
            self.cbuf.advance(first);
            failure.write(&mut out, Severity::Error);
            proto::ready(&mut out, status);
        } else {
            // A ReadyForQuery alone would read as a query that ran and returned nothing.
            self.cbuf.advance(whole);
            for _ in 0..syncs {
                failure.write(&mut out, Severity::Error);
                proto::ready(&mut out, status);
            }
        }
        self.client.write_all(&out).await.err().map(|_| End::Client)
    }

    /// Forwards every complete server message, with the rewrites transaction mode needs,
    /// and gives the server back when the transaction is over.
    async fn server_messages(&mut self) -> Option<End> {
        let lease = self.lease.as_mut()?;
        let conn = &mut lease.conn;
        let mut consumed = 0;
        let mut rewritten = false;
        let mut lost = None;
        let mut died_after_answering = false;
        let mut answer_started = false;
        for (tag, msg) in proto::messages(&conn.buf) {
            if tag == b'E'
                && self.transaction
                && self.pending_z == 0
                && !self.unsynced
                && self.status == b'I'
                && self.pin.bits == 0
                && resend::is_fatal(msg)
            {
                // The server answered everything, then ended the connection (a restart right
                // after a transaction, in the same read): nothing of the client's was lost and
                // the FATAL answers nothing it sent, so it is not passed on; the connection is
                // dropped below and the client's next transaction gets another.
                died_after_answering = true;
                break;
            }
            if self.resend_ok && resend::says_goodbye(tag, msg) {
                // The server ends the connection before anything reached the client.
                let code = resend::error_fields(msg).1.unwrap_or_default();
                lost = Some(format!(
                    "the server ended the connection (SQLSTATE {})",
                    String::from_utf8_lossy(code)
                ));
                break;
            }
            consumed += msg.len();
            if self.swallow_z > 0 {
                // Responses to a BEGIN the pooler sent on the client's behalf.
                if tag == b'Z' {
                    self.swallow_z -= 1;
                }
                if !rewritten {
                    rewritten = true;
                    start_answer(&mut self.to_client, &conn.buf[..consumed - msg.len()]);
                }
                continue;
            }
            let action = if self.transaction {
                self.stmts.server_message(msg, &mut conn.prepared)
            } else {
                Action::Forward
            };
            // Known to parse for Parses answered without a server (local_parse.rs): only
            // what was prepared between transactions in the default scope.
            if let Some(id) = self.stmts.take_parsed()
                && self.status == b'I'
                && self.track.default_scope()
            {
                self.pool.statement_parsed(id);
            }
            if let Some(shape) = self.stmts.take_shape() {
                let check = shape_check::Check {
                    checking: &mut self.checking,
                    stale_plans: &mut self.stale_plans,
                };
                shape_check::seen(&self.pool, shape, &mut conn.prepared, check);
            }
            match tag {
                b'G' => self.copy_in = true,
                b'Z' => {
                    self.copy_in = false;
                    self.status = msg.get(5).copied().unwrap_or(b'I');
                    if self.swallow_lone_z == 0 {
                        self.pending_z = self.pending_z.saturating_sub(1);
                        self.pool.stats.queries.fetch_add(1, Relaxed);
                    }
                    if self.transaction {
                        self.pin.settle(self.track.segment_error);
                    }
                    if self.transaction || self.track.settings.has_startup() {
                        self.track.settle(self.status, &mut conn.settings);
                    }
                }
                b'E' => {
                    // The server skips the rest of the segment, a held check of it included:
                    // the client's messages go on (and are skipped the same way). An earlier
                    // segment's error does not: its Sync ends the skipping before the check.
                    if self.checking == Some(self.track.done) {
                        self.checking = None;
                    }
                    self.track.segment_error = true;
                    self.fatal_forwarded |= resend::is_fatal(msg);
                    if stale_plans::plan_went_stale(msg) {
                        // At once: the client may have sent its new Parse already.
                        if let Some(id) = self.stmts.failed_statement() {
                            self.pool.retire_statement(id);
                        }
                        stale_plans::renew(&self.pool);
                        self.stale_plans = true;
                    }
                }
                b'C' => {
                    self.track.rolled_back = msg.get(5..13) == Some(b"ROLLBACK");
                    self.track.saw_rollback |= self.track.rolled_back;
                    self.track.saw_commit |= msg.get(5..12) == Some(b"COMMIT\0");
                }
                _ => {}
            }
            // While a sharded client's BEGIN waits for a statement with a key, describe-only
            // batches run outside any transaction; the client still sees itself in one.
            if tag == b'Z' {
                self.swallow_parse = 0;
            }
            let action = if tag == b'1' && self.swallow_parse > 0 {
                self.swallow_parse -= 1;
                Action::Drop
            } else if tag == b'Z' && self.swallow_lone_z > 0 {
                self.swallow_lone_z -= 1;
                Action::Drop
            } else if tag == b'Z' && self.deferred_begin {
                Action::InTransaction
            } else {
                action
            };
            if self.resend_ok && action != Action::Drop {
                if tag == b'Z' {
                    // A segment is answered whole: this batch is never sent again.
                    self.resend_ok = false;
                    self.resends = 0;
                    resend::forget(&mut self.resend);
                } else {
                    // The first part of an answer (a BindComplete the server flushed with its
                    // FATAL, say): it reaches the client only when this buffer is written, so
                    // a FATAL later in the same buffer still means "nothing answered".
                    answer_started = true;
                }
            }
            if action != Action::Forward && !rewritten {
                rewritten = true;
                start_answer(&mut self.to_client, &conn.buf[..consumed - msg.len()]);
            }
            if rewritten {
                match action {
                    Action::Forward => self.to_client.put_slice(msg),
                    Action::Drop => {}
                    Action::ParseComplete => self.to_client.put_slice(b"1\0\0\0\x04"),
                    Action::InTransaction => self.to_client.put_slice(b"Z\0\0\0\x05T"),
                    Action::Tag(t) => state::complete(&mut self.to_client, t),
                    Action::Refused(bits) => state::refusal(&mut self.to_client, bits),
                    Action::Stale => stale_plans::stale_statement(&mut self.to_client),
                }
            }
        }
        if let Some(why) = lost {
            self.to_client.clear();
            spare::give(&mut self.to_client);
            return self.resend_or_end(why);
        }
        if consumed == 0 {
            if died_after_answering {
                self.release(false);
            }
            return None;
        }
        let out: &[u8] = if rewritten {
            &self.to_client
        } else {
            &conn.buf[..consumed]
        };
        self.pool
            .stats
            .bytes_out
            .fetch_add(out.len() as u64, Relaxed);
        let r = self.client.send_all(out).await;
        conn.buf.advance(consumed);
        self.to_client.clear();
        spare::give(&mut self.to_client);
        if r.is_err() {
            return Some(End::Client);
        }
        if answer_started {
            // The client has part of an answer now: this batch is never sent again.
            self.resend_ok = false;
            self.resends = 0;
            resend::forget(&mut self.resend);
        }
        if died_after_answering {
            tracing::info!("the server ended its connection after a transaction; dropped");
            self.release(false);
            return None;
        }
        if self.transaction
            && self.pending_z == 0
            && !self.unsynced
            && self.status == b'I'
            && self.swallow_z == 0
            && self.swallow_lone_z == 0
        {
            if self.pin.bits != 0 {
                if self.pin.verify
                    && let Some(lease) = self.lease.as_mut()
                {
                    self.pin.verify = false;
                    match state::verify(&mut lease.conn, self.pin.bits).await {
                        Ok(bits) => self.pin.bits = bits,
                        // The server answered with an error: asked again at the next end.
                        Err(e) if e.kind() == std::io::ErrorKind::Other => {
                            self.pin.verify = true;
                            tracing::warn!(error = %e, "asking a server for session state failed")
                        }
                        // Its answer may still come: the connection is out of step, and the
                        // state it holds for this client (a lock, a cursor) is gone with it.
                        Err(e) => return Some(End::ServerLost(e.to_string())),
                    }
                }
                self.count_pin();
                if self.pin.bits != 0 {
                    // Pinned: the server stays with this client.
                    return None;
                }
            }
            if (!self.track.reread.is_empty() || self.track.read_all)
                && let Some(lease) = self.lease.as_mut()
                && !reread_settings(&mut self.track, &mut lease.conn).await
            {
                // Its answer may still come: the connection cannot serve again.
                self.release(false);
                return None;
            }
            if !self.drop_stale_plans().await {
                self.release(false);
                return None;
            }
            if self.wrote
                && let Some(lease) = self.lease.as_mut()
            {
                // Read-your-writes: later reads wait for a replica that has replayed this.
                const LSN: &str =
                    "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint::text";
                match lease.conn.query_row(LSN).await {
                    Ok(row) => {
                        let lsn = row.first().cloned().flatten().and_then(|v| v.parse().ok());
                        self.min_lsn = self.min_lsn.max(lsn.unwrap_or(0));
                    }
                    Err(e) => return Some(End::ServerLost(e.to_string())),
                }
            }
            self.release(true);
        }
        None
    }

    fn release(&mut self, reusable: bool) {
        // A check's answer can only come on this server connection.
        self.checking = None;
        if let Some(lease) = self.lease.take() {
            self.pool.stats.xacts.fetch_add(1, Relaxed);
            if let Ok(mut s) = self.slot.server.lock() {
                *s = None;
            }
            // A cancel this client sent may still be on its way to the server: the server waits
            // for it to land before another client can have it (cancel.rs).
            if reusable && self.slot.cancels.busy() {
                let (pool, gate) = (self.pool.clone(), self.slot.cancels.clone());
                tokio::spawn(async move {
                    gate.cleared().await;
                    pool.release(lease, !gate.take_unsure());
                });
                return;
            }
            // A cancel that ended unconfirmed may still land on this server's next query.
            let unsure = self.slot.cancels.take_unsure();
            self.pool.release(lease, reusable && !unsure);
        }
    }

    /// Ends the session: reports fatal conditions, and returns or closes the server.
    async fn finish(&mut self, end: End) {
        let idle = self.pending_z == 0 && !self.unsynced && self.status == b'I';
        if self.pin.counted {
            self.pin.counted = false;
            self.pool.stats.pinned.fetch_sub(1, Relaxed);
        }
        match end {
            End::Client if self.transaction && self.pin.bits != 0 => {
                // Session state must not reach the next client: clean it, or close the server.
                let mut clean = false;
                if idle && let Some(lease) = self.lease.as_mut() {
                    clean = discard_all(&mut lease.conn).await;
                    lease.conn.prepared.clear();
                    lease.conn.settings = 0;
                }
                self.release(clean);
            }
            End::Client => {
                if !self.transaction
                    && idle
                    && let Some(lease) = self.lease.as_mut()
                {
                    // Session mode: the next client must not see this one's state.
                    let clean = discard_all(&mut lease.conn).await;
                    lease.conn.prepared.clear();
                    lease.conn.settings = 0;
                    self.release(clean);
                }
                self.release(idle && self.transaction);
            }
            End::ServerLost(why) => {
                self.stmts.reset_flight();
                self.release(false);
                // One FATAL per client: the server's own, when it sent one, else ours.
                if !self.fatal_forwarded {
                    let lost = Failure::ConnectionLost(format!("server connection lost: {why}"));
                    let _ = self.client.write_all(&lost.fatal()).await;
                }
            }
            End::Shutdown => {
                // At the drain's deadline a transaction may still be open: its query in flight
                // is cancelled and its server connection closed (PostgreSQL rolls it back).
                if !idle && let Some(lease) = &self.lease {
                    let key = lease.conn.key;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), crate::server::cancel(key))
                            .await;
                }
                self.release(false);
                let _ = self.client.write_all(&Failure::Shutdown.fatal()).await;
            }
            End::Fatal(failure) => {
                self.release(false);
                let _ = self.client.write_all(&failure.fatal()).await;
                // Not half-closed first: libpq, still writing, takes our FIN for the end and
                // never reads the FATAL waiting for it.
                linger(&mut self.client).await;
            }
        }
        let _ = self.client.shutdown().await;
    }

    /// Where the next transaction goes: a replica when every statement in the client's batch
    /// is a read (or it starts a read-only transaction) and replicas are configured; otherwise
    /// the primary.
    /// Also says whether the batch may write (then read-your-writes tracking follows it).
    fn route(&self) -> (Route, bool) {
        if !self.split {
            return (Route::Primary, false);
        }
        // A standby refuses every transaction of a client whose default isolation is
        // SERIALIZABLE (0A000), and refuses to apply that setting at all.
        let mut primary = self.serializable_by_default();
        let mut seen = false;
        for (tag, msg) in proto::messages(&self.cbuf) {
            let mut body = &msg[5..];
            let sql = match tag {
                b'Q' => proto::cbytes(&mut body),
                b'P' => proto::cbytes(&mut body).and_then(|_| proto::cbytes(&mut body)),
                b'B' => proto::cbytes(&mut body)
                    .and_then(|_| proto::cbytes(&mut body))
                    .and_then(|name| self.stmts.query_of(name)),
                _ => continue,
            };
            let Some(sql) = sql.and_then(|s| std::str::from_utf8(s).ok()) else {
                // The unnamed statement parsed earlier, or a name we do not know.
                if tag == b'B' {
                    continue;
                }
                return (Route::Primary, true);
            };
            if self.pooler.classifier.class(sql) == Class::Write {
                return (Route::Primary, true);
            }
            // Session state pins the client to its server connection; made on a replica it
            // would keep every later write of the client there (replica hint or not).
            primary |= self
                .pooler
                .analyzer
                .effects(sql.as_bytes())
                .is_some_and(|fx| fx.creates | fx.suspect != 0);
            seen = true;
        }
        if self.holds_a_long_batch() {
            // Too long to wait for its end (`waits_for_batch`): what follows may write.
            (Route::Primary, true)
        } else if seen && !primary {
            let read = Route::Read {
                min_lsn: self.min_lsn,
            };
            (read, false)
        } else {
            // Sync, Close and the like: no statement runs, nothing is written.
            (Route::Primary, false)
        }
    }
}

impl Session {
    /// Whether the client's own settings make every transaction SERIALIZABLE.
    fn serializable_by_default(&self) -> bool {
        self.track
            .settings
            .get("default_transaction_isolation")
            .is_some_and(|sql| sql.to_ascii_lowercase().contains("serializable"))
    }

    /// With no server held and nothing unanswered, a Flush has nothing to flush: it is
    /// dropped here rather than taking a server (psycopg 3 ends every pipeline with Sync then
    /// Flush; the Flush, alone after the Sync's answer, would hold a server for an idle
    /// client until its next statement). Returns whether a complete message is left to handle.
    fn drop_idle_flushes(&mut self) -> bool {
        if self.unsynced || self.pending_z > 0 || self.swallow_lone_z > 0 || self.skip_to_sync {
            return true;
        }
        let mut flushes = 0;
        for (tag, msg) in proto::messages(&self.cbuf) {
            if tag != b'H' || msg.len() != 5 {
                break;
            }
            flushes += msg.len();
        }
        if flushes == 0 {
            return true;
        }
        self.cbuf.advance(flushes);
        matches!(proto::tagged_len(&self.cbuf, self.max), Ok(Some(_)))
    }

    /// Whether reads are split or the database sharded: each batch is routed on its own.
    fn routed(&self) -> bool {
        self.split || self.sharding.is_some()
    }

    /// Whether routing must see the client's whole batch (up to a Sync, Query, FunctionCall or
    /// Flush) before a server is chosen: when reads are split or the database is sharded.
    fn waits_for_batch(&self) -> bool {
        if self.checking.is_some() {
            return true;
        }
        if matches!(self.scan_parses(), local_parse::Scan::Partial) {
            return true;
        }
        if !self.routed() {
            return false;
        }
        // A pipelined batch waits for the answers to the one in flight (unless COPY data is
        // what the server waits for): it may belong on another server. In a sharded database
        // each batch is also checked whole against the transaction's shard.
        if self.lease.is_some() {
            if self.copy_in {
                return false;
            }
            if self.pending_z > 0 || self.swallow_lone_z > 0 {
                return true;
            }
            if self.sharding.is_none() {
                return false;
            }
        }
        // A batch that grows past its limit without an end goes on as it stands (`route`
        // sends it to the primary, `shard_decision` refuses it): held, it would grow without
        // bound.
        let (ends, held) = batch_extent(&self.cbuf);
        !ends && held < self.batch_limit()
    }

    /// The most of the client's messages held: to route an unended batch, or while the server
    /// answers the one before. A sharded database splits pipelined Bind/Execute pairs (asyncpg's
    /// `executemany`) only whole, so it holds more.
    pub(super) fn batch_limit(&self) -> usize {
        if self.sharding.is_some() {
            MAX_SHARDED_BATCH
        } else {
            MAX_HELD
        }
    }

    /// Whether the client's buffer holds a batch too long to wait for its end (see
    /// [`batch_extent`]).
    fn holds_a_long_batch(&self) -> bool {
        let (ends, held) = batch_extent(&self.cbuf);
        !ends && held >= self.batch_limit()
    }

    /// Whether no more of the client's messages are read until the server answers: the session
    /// waits for the server (an answer owed, a statement's check), not for more of the client
    /// (its batch's end, COPY data), and the buffer, which starts with a complete message, is
    /// at its limit.
    fn holds_enough(&self) -> bool {
        (self.pending_z > 0 || self.swallow_lone_z > 0 || self.checking.is_some())
            && !self.copy_in
            && self.cbuf.len() >= self.batch_limit()
            && matches!(proto::tagged_len(&self.cbuf, self.max), Ok(Some(_)))
    }
}

/// The most of a client's messages the pooler holds while it waits: for the end of a batch
/// split between primary and replicas, or for the server's answer to the batch before. A single
/// message may be longer (`max_message_bytes`).
const MAX_HELD: usize = 1 << 20;

/// The most of a batch without its end held in a sharded database.
const MAX_SHARDED_BATCH: usize = 16 << 20;

/// What the client's buffer holds of its next batch: whether a message ends it (Sync, Query,
/// FunctionCall, Flush or Terminate), and the bytes of its complete messages but the longest.
/// A batch is held until that passes its limit, so one long message (a large bind parameter,
/// up to `max_message_bytes`) never decides alone, wherever the reads happen to split.
fn batch_extent(buf: &[u8]) -> (bool, usize) {
    let (mut total, mut longest) = (0, 0);
    for (tag, msg) in proto::messages(buf) {
        if matches!(tag, b'S' | b'Q' | b'F' | b'H' | b'X') {
            return (true, total);
        }
        total += msg.len();
        longest = longest.max(msg.len());
    }
    (false, total - longest)
}

fn transaction_mode_split(pool: &Pool) -> bool {
    pool.mode() == PoolMode::Transaction && pool.topology.has_replicas()
}

/// Starts a rewritten answer in `to_client` (a spare buffer) with the server's bytes before the
/// first message that is not passed on as it is.
fn start_answer(to_client: &mut BytesMut, head: &[u8]) {
    if to_client.capacity() == 0 {
        *to_client = spare::take();
    }
    to_client.put_slice(head);
}

/// Reads what the client sent. A client with nothing buffered holds no buffer while it waits
/// (see `spare`); TLS keeps its own.
async fn read_client(client: &mut ClientStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    match client {
        crate::stream::Stream::Plain(tcp) if buf.is_empty() => spare::read(tcp, buf).await,
        _ => {
            if buf.capacity() == 0 {
                *buf = spare::take();
            }
            client.read_some(buf).await
        }
    }
}

/// One place under `max_client_conn`, given back when dropped.
struct ClientCount<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> ClientCount<'a> {
    /// A place, unless `max` are taken.
    fn take(count: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<ClientCount<'a>> {
        let before = count.fetch_add(1, Relaxed);
        let counted = ClientCount(count);
        (before < max).then_some(counted)
    }
}

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Settings a transaction-mode client made, and those in flight. Changes are kept with the
/// segment (the messages up to a Sync, Query or FunctionCall) that sends them, since a client
/// may send the next segment before the previous one is answered.
struct Track {
    settings: Settings,
    /// Setting changes sent and not yet settled, by segment; applied when their transaction
    /// commits.
    changes: Vec<(u64, Change)>,
    /// A multi-statement query touched settings in this segment: the server's session is
    /// unknown once it has run.
    unknown: Option<u64>,
    /// Segments sent and answered.
    sent: u64,
    done: u64,
    segment_error: bool,
    /// The last command of the segment was a ROLLBACK (whole, or to a savepoint).
    rolled_back: bool,
    /// The segment ran a ROLLBACK (whole, or to a savepoint).
    saw_rollback: bool,
    /// The segment ran a COMMIT: at a ReadyForQuery still in a transaction, a COMMIT AND
    /// CHAIN, which made the changes before it the session's whatever the chained transaction
    /// does.
    saw_commit: bool,
    /// The open transaction follows a COMMIT AND CHAIN: its end, even a ROLLBACK, leaves
    /// settings only the server knows.
    chained: bool,
    /// The open transaction had a savepoint rolled back or an error while changes were
    /// pending: which of them survive, only the server knows.
    ambiguous: bool,
    /// Settings to read back from the server before its connection is released (see
    /// `ambiguous`).
    reread: Vec<String>,
    /// The server's settings stay unknown after the read-back (a segment had statements the
    /// pooler could not follow).
    unknown_kept: bool,
    /// Statements it could not follow ran (a DO block, UPDATE pg_settings, a bound portal it
    /// forgot): every setting the server's session has made is read back as the client's.
    read_all: bool,
    /// The search_path a statement sent since segment `.0` changed (a `SET LOCAL`, or a SET
    /// not yet settled): it names the client's statements until that transaction ends.
    path_now: Option<(u64, Option<String>)>,
}

impl Track {
    /// What names the tables the client's statements read now, which scopes them
    /// (`Pool::statement_id`): the search_path (its SET's text), and the role a `SET ROLE`
    /// took, which the default search_path's `"$user"` names. `None`: the defaults.
    fn statement_scope(&self) -> Option<std::borrow::Cow<'_, str>> {
        let path = match &self.path_now {
            Some((_, path)) => path.as_deref(),
            None => self.settings.get("search_path"),
        };
        match (path, self.settings.get("role")) {
            (path, None) => path.map(std::borrow::Cow::Borrowed),
            (path, Some(role)) => Some(format!("{}\0{role}", path.unwrap_or_default()).into()),
        }
    }

    /// Whether the client's statements are named in the default scope, with nothing of its
    /// settings unsettled or in doubt.
    fn default_scope(&self) -> bool {
        self.path_now.is_none()
            && self.changes.is_empty()
            && self.unknown.is_none()
            && self.reread.is_empty()
            && !self.unknown_kept
            && self.settings.get("search_path").is_none()
            && self.settings.get("role").is_none()
    }

    /// Forgets the changes of segments that were sent but will be sent again (their server
    /// was lost before answering).
    fn forget_unsent(&mut self) {
        let done = self.done;
        self.changes.retain(|(s, _)| *s < done);
        self.unknown = self.unknown.filter(|s| *s < done);
        self.path_now = self.path_now.take().filter(|(s, _)| *s < done);
        self.sent = done;
    }

    /// At a ReadyForQuery with `status`: keep, apply or drop the transaction's changes, and
    /// record what the server's session now holds.
    fn settle(&mut self, status: u8, server: &mut u64) {
        let segment = self.done;
        self.done += 1;
        let error = std::mem::take(&mut self.segment_error);
        let rollback = std::mem::take(&mut self.saw_rollback);
        let commit = std::mem::take(&mut self.saw_commit);
        // Out of the transaction: a SET LOCAL is gone, a SET is settled below.
        if status == b'I' && self.path_now.as_ref().is_some_and(|(s, _)| *s <= segment) {
            self.path_now = None;
        }
        if self.changes.is_empty() && self.unknown.is_none() && !self.chained {
            return;
        }
        // Changes of later segments (sent ahead) wait for their own ReadyForQuery.
        let ran = self.changes.partition_point(|(s, _)| *s <= segment);
        match status {
            // Still in the transaction. An error, or a ROLLBACK TO SAVEPOINT, undoes some of
            // its changes, and a later ROLLBACK TO may bring the transaction back to a commit.
            b'T' | b'E' => {
                let chain = commit && !self.changes.is_empty();
                self.ambiguous |= status == b'E' || rollback || chain;
                self.chained |= chain;
            }
            _ => {
                let settled: Vec<(u64, Change)> = self.changes.drain(..ran).collect();
                let ambiguous = std::mem::take(&mut self.ambiguous);
                let chained = std::mem::take(&mut self.chained);
                let unknown = self.unknown.is_some_and(|s| s <= segment);
                // One segment that committed and then rolled back or failed (a pipeline, a
                // multi-statement string: `…; COMMIT AND CHAIN; ROLLBACK`), or whose statements
                // the pooler could not follow one by one: only the server knows what stayed.
                let mixed = commit && (rollback || error);
                let mut past_startup = false;
                let doubtful = (ambiguous && (!self.rolled_back || chained))
                    || mixed
                    || (unknown && !settled.is_empty());
                // Statements it could not follow may have changed settings it cannot name:
                // the server stays unknown even once the named ones are read back.
                self.unknown_kept |= unknown && doubtful;
                if doubtful {
                    // A RESET ALL in doubt puts every setting the client had in doubt.
                    let all = settled.iter().any(|(_, c)| c.name().is_none());
                    let names = settled.iter().filter_map(|(_, c)| c.name());
                    let names: Vec<String> = match all {
                        true => names
                            .chain(self.settings.names())
                            .map(str::to_string)
                            .collect(),
                        false => names.map(str::to_string).collect(),
                    };
                    for name in names {
                        if !self.reread.contains(&name) {
                            self.reread.push(name);
                        }
                    }
                } else if !error && !self.rolled_back {
                    for (_, c) in &settled {
                        // The server went back to its own default where the client's is
                        // its startup value: the next transaction replays the client's.
                        past_startup |= self.settings.resets_a_startup_value(c);
                        self.settings.apply(c);
                    }
                }
                *server = if unknown || !self.reread.is_empty() || past_startup {
                    SETTINGS_UNKNOWN
                } else {
                    self.settings.fingerprint()
                };
                if unknown {
                    self.unknown = None;
                    self.read_all = true;
                }
            }
        }
    }
}

/// Whether the client asked for a replication connection (`replication=true` or `database`),
/// which would otherwise be served as an ordinary one without a word.
fn wants_replication(startup: &proto::Startup) -> bool {
    startup.params.iter().any(|(k, v)| {
        k == "replication"
            && !matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0" | ""
            )
    })
}

/// After a FATAL, reads and drops what the client is still sending (for up to 2 s, while bytes
/// keep coming): closing a socket with unread bytes resets the connection, and the client,
/// still writing (a message over the size limit), would get EPIPE or a reset instead of the
/// FATAL waiting for it.
async fn linger(client: &mut ClientStream) {
    let mut scratch = BytesMut::with_capacity(64 * 1024);
    let drain = async {
        loop {
            scratch.clear();
            // A client that is not sending (it waits for our answer) is not waited for.
            let read =
                tokio::time::timeout(Duration::from_millis(100), client.read_some(&mut scratch));
            if !matches!(read.await, Ok(Ok(n)) if n > 0) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Reads the settings `track.reread` names back from the server whose transaction left them
/// in doubt, and records them as the client's; the server's session is then known again. With
/// `track.read_all`, every setting the session has made (`pg_settings` source `session`) is
/// read, and the client's others are reset. When the server cannot say, it stays unknown (the
/// next client's settings are replayed whole) and the client keeps what it had before.
/// Returns false when the connection is out of step (lost, or its answer did not come in time).
async fn reread_settings(track: &mut Track, conn: &mut crate::server::ServerConn) -> bool {
    let mut names = std::mem::take(&mut track.reread);
    let mut session: Option<Vec<String>> = None;
    if std::mem::take(&mut track.read_all) {
        let asked = conn.query_row(crate::settings::SESSION_SETTINGS_SQL);
        match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
            Ok(Ok(row)) => {
                let made: Vec<String> = row
                    .into_iter()
                    .flatten()
                    .flat_map(|list| list.split(',').map(str::to_string).collect::<Vec<_>>())
                    .filter(|n| !n.is_empty())
                    .collect();
                for n in made
                    .iter()
                    .map(String::as_str)
                    .chain(track.settings.names())
                {
                    if !names.iter().any(|k| k == n) {
                        names.push(n.to_string());
                    }
                }
                session = Some(made);
                track.unknown_kept = false;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading settings back from a server failed");
                return e.kind() == std::io::ErrorKind::Other;
            }
            Err(_) => {
                tracing::warn!("reading settings back from a server timed out");
                return false;
            }
        }
    }
    if names.is_empty() {
        conn.settings = track.settings.fingerprint();
        return true;
    }
    let sql = crate::settings::read_back_sql(&names);
    let asked = conn.query_row(&sql);
    match tokio::time::timeout(std::time::Duration::from_secs(5), asked).await {
        Ok(Ok(values)) => {
            // A server at its default where the client's is a startup value stays unknown.
            let mut past_startup = false;
            for (name, value) in names.iter().zip(values) {
                // A setting the session has not made is at its default: reset for the client.
                let made = session.as_ref().is_none_or(|s| s.contains(name));
                past_startup |= track
                    .settings
                    .adopt(name, value.as_deref().filter(|_| made));
            }
            if !std::mem::take(&mut track.unknown_kept) && !past_startup {
                conn.settings = track.settings.fingerprint();
            }
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading settings back from a server failed");
            // An error the server answered leaves the connection in step.
            e.kind() == std::io::ErrorKind::Other
        }
        Err(_) => {
            tracing::warn!("reading settings back from a server timed out");
            false
        }
    }
}

/// Resets a server connection's session for the next client (bounded: a server that does not
/// answer in time is not reused).
async fn discard_all(conn: &mut crate::server::ServerConn) -> bool {
    let run = conn.run("DISCARD ALL");
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), run).await,
        Ok(Ok(()))
    )
}

/// PostgreSQL's answer to a message type no client may send.
fn invalid_message(tag: u8) -> Failure {
    Failure::Protocol(format!("invalid frontend message type {tag}"))
}

/// The statement name of a Parse message.
fn parsed_name(msg: &[u8]) -> &[u8] {
    let mut body = &msg[5..];
    proto::cbytes(&mut body).unwrap_or_default()
}

/// The SQL text of a Query or Parse message, and whether it is a Query or an unnamed Parse.
/// Why PostgreSQL would refuse a Query message's body (08P01): its text must end at its one
/// NUL, the body's last byte.
fn malformed_query(body: &[u8]) -> Option<&'static str> {
    match body.iter().position(|&b| b == 0) {
        None => Some("invalid string in message"),
        Some(end) if end + 1 != body.len() => Some("invalid message format"),
        Some(_) => None,
    }
}

fn statement_text(msg: &[u8]) -> Option<(&[u8], bool)> {
    let mut body = &msg[5..];
    match msg[0] {
        b'Q' => Some((proto::cbytes(&mut body)?, true)),
        b'P' => {
            let name = proto::cbytes(&mut body)?;
            Some((proto::cbytes(&mut body)?, name.is_empty()))
        }
        _ => None,
    }
}
