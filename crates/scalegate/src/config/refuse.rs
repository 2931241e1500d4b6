//! Configs that parse but must not run: one that serves nothing (a truncated or empty file
//! would otherwise stop every listener on reload), an admin API open to the network without a
//! token, pooler console users who could log in without a password.

use std::net::SocketAddr;

use super::pg::RawPostgres;
use super::raw::{RawAdmin, RawConfig};
use super::validate::Check;

/// A file with no `[[listeners]]` and no `[postgres]` serves nothing: refused (for `check`,
/// `run` and reload alike, so a reload to it keeps the running config).
pub(super) fn serves_something(c: &mut Check, raw: &RawConfig) {
    if raw.listeners.is_empty() && raw.postgres.is_none() {
        c.err(
            0..0,
            "nothing to serve: the file has no [[listeners]] and no [postgres] (an empty or truncated file is refused; the running config stays in force on reload)",
        );
    }
}

/// The admin API on an address other hosts can reach needs `admin.token`, or an explicit
/// `admin.expose_without_token = true` (its read-only endpoints then answer anyone).
pub(super) fn admin_exposure(c: &mut Check, admin: &RawAdmin, listen: SocketAddr) {
    let Some(at) = &admin.listen else { return };
    if listen.ip().is_loopback()
        || admin.token.is_some()
        || admin.expose_without_token == Some(true)
    {
        return;
    }
    c.err(
        at.span(),
        format!(
            "admin.listen {listen} is reachable from other hosts but admin.token is not set: set a token (16+ characters), listen on 127.0.0.1, or set admin.expose_without_token = true to serve the read-only endpoints (health, metrics, upstreams) to anyone"
        ),
    );
}

/// Every `postgres.admin_users` name needs a `[postgres.users.NAME]` entry: without one the
/// console would let it in with no password (no users at all) or never (users listed).
pub(super) fn admin_users_authenticate(c: &mut Check, pg: &toml::Spanned<RawPostgres>) {
    let p = pg.get_ref();
    let Some(admins) = &p.admin_users else { return };
    for name in admins.get_ref() {
        if p.users.contains_key(name) {
            continue;
        }
        let why = if p.users.is_empty() {
            "with no [postgres.users] the console would let it in without a password"
        } else {
            "it could never log in to the console"
        };
        c.err(
            admins.span(),
            format!(
                "postgres.admin_users: {name:?} has no [postgres.users.{name}] entry with a password: {why}"
            ),
        );
    }
}
