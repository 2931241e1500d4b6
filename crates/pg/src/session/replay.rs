//! Re-applying a client's settings (startup parameters, SET) to the server connection it got,
//! in transaction mode: one multi-statement query (`Settings::replay_sql`), run as one implicit
//! transaction.
//!
//! - A server lost meanwhile: another connection (up to three times).
//! - A setting PostgreSQL takes only at login (`log_connections`, `post_auth_delay`, …: the
//!   `backend` and `superuser-backend` contexts), given as a startup parameter: PostgreSQL
//!   applied it to the session it started, but a pooled connection is long past its login and
//!   refuses it (55P02). It is dropped from the client's settings with a warning, and the
//!   client goes on without its effect (it connects, as it would directly).
//! - Any other refusal (an unknown parameter, a bad value, no permission): PostgreSQL refuses
//!   such a login, so the client is ended with the server's error; it never runs with the
//!   settings the connection had before.

use std::io;

use super::Session;
use crate::pool::{AcquireError, Lease};
use crate::server::{Refusal, SETTINGS_UNKNOWN, ServerConn};
use crate::settings::Settings;

/// SQLSTATE of a setting that cannot be changed after connection start.
const LOGIN_ONLY: &str = "55P02";

/// How often a replay was retried, for one wait.
#[derive(Debug, Default)]
pub(super) struct Retries {
    lost: u32,
    login_only_dropped: bool,
}

/// What a replay came to.
pub(super) enum Replay {
    /// The connection has the client's settings.
    Applied,
    /// Give the connection back (`reusable` or not) and take another.
    Again {
        /// Whether the connection may serve again.
        reusable: bool,
    },
    /// The server refuses the client's settings.
    Refused(AcquireError),
}

impl Session {
    /// Applies this client's settings to `lease`'s connection.
    pub(super) async fn replay(&mut self, lease: &mut Lease, retries: &mut Retries) -> Replay {
        let wanted = self.track.settings.fingerprint();
        let sql = self.track.settings.replay_sql();
        let e = match lease.conn.run(&sql).await {
            Ok(()) => {
                lease.conn.settings = wanted;
                return Replay::Applied;
            }
            Err(e) => e,
        };
        let Some(r) = Refusal::of(&e) else {
            if retries.lost < 3 {
                retries.lost += 1;
                tracing::info!(error = %e, "server lost while applying settings; another");
                return Replay::Again { reusable: false };
            }
            tracing::warn!(error = %e, "re-applying a client's settings failed");
            lease.conn.settings = SETTINGS_UNKNOWN;
            return Replay::Applied;
        };
        if r.code == LOGIN_ONLY && !std::mem::replace(&mut retries.login_only_dropped, true) {
            let reusable = match drop_login_only(&mut lease.conn, &mut self.track.settings).await {
                Ok(names) => {
                    tracing::warn!(
                        ?names,
                        "startup parameters PostgreSQL takes only at login are ignored"
                    );
                    true
                }
                Err(e) => {
                    tracing::info!(error = %e, "server lost while applying settings");
                    false
                }
            };
            return Replay::Again { reusable };
        }
        Replay::Refused(AcquireError::Settings {
            code: r.code.clone(),
            message: r.message.clone(),
        })
    }
}

/// Applies each of `settings` alone on `conn` and drops those refused with 55P02; returns
/// their names. `conn`'s settings are unknown afterwards (a full replay comes next).
async fn drop_login_only(
    conn: &mut ServerConn,
    settings: &mut Settings,
) -> io::Result<Vec<String>> {
    conn.settings = SETTINGS_UNKNOWN;
    let mut dropped = Vec::new();
    let names: Vec<String> = settings.names().map(str::to_string).collect();
    for name in names {
        let Some(sql) = settings.get(&name).map(str::to_string) else {
            continue;
        };
        if let Err(e) = conn.run(&sql).await {
            match Refusal::of(&e) {
                Some(r) if r.code == LOGIN_ONLY => {
                    settings.forget(&name);
                    dropped.push(name);
                }
                Some(_) => {}
                None => return Err(e),
            }
        }
    }
    Ok(dropped)
}
