//! Settings a parsed statement makes (`SET …` prepared by psycopg, asyncpg's
//! `set_config('jit', $1, false)`) are made when a portal of it runs: a Bind says what they
//! will be (the parameter values are in it), the Execute of that portal makes them the
//! client's. A Bind whose portal never runs (closed, or the server refused the Execute)
//! changes nothing, as on the server.

use super::{Track, batch, state};
use crate::effects::Effects;
use crate::proto;
use crate::settings::Change;

/// Prepared statements that change settings, by name (the unnamed one's name is empty).
pub(super) type SettingStatements = std::collections::HashMap<Vec<u8>, std::sync::Arc<Effects>>;

/// Follows what a client message does to the settings made through prepared statements: a
/// Parse that names a statement again forgets what it did, a Bind says what its portal will
/// change, an Execute makes that the client's (in `segment`). `parsed`: the effects of the
/// statement a Parse prepares, remembered when they change settings.
pub(super) fn follow(
    (tag, msg, segment): (u8, &[u8], u64),
    parsed: Option<&std::sync::Arc<Effects>>,
    statements: &mut SettingStatements,
    bound: &mut BoundSettings,
    track: &mut Track,
) {
    if !statements.is_empty() {
        match tag {
            b'B' => {
                let kept = bound.bind(msg, statements);
                // A portal's changes forgotten unrun: the server's to tell.
                track.unknown = track.unknown.or((!kept).then_some(segment));
            }
            // A name parsed again is another statement.
            b'P' => _ = statements.remove(super::parsed_name(msg)),
            _ => {}
        }
    }
    if tag == b'E' && !bound.is_empty() {
        bound.execute(msg, segment, track);
    }
    if tag == b'P'
        && let Some(fx) = parsed
        && !(fx.settings.is_empty() && fx.param_settings.is_empty())
    {
        statements.insert(super::parsed_name(msg).to_vec(), fx.clone());
    }
}

/// Portals bound and not yet run that are remembered (the oldest is forgotten first).
const MAX_PENDING: usize = 64;

/// What each bound portal will change when it runs, by portal name.
#[derive(Debug, Default)]
pub(super) struct BoundSettings {
    pending: Vec<(Vec<u8>, Bound)>,
}

/// One portal's settings: the changes, and whether some cannot be told (the server's then).
#[derive(Debug, Default)]
struct Bound {
    changes: Vec<Change>,
    unknown: bool,
    statements: usize,
}

impl BoundSettings {
    /// Nothing is waiting for an Execute.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A Bind: when its statement is one of `statements` (those that change settings, by name;
    /// the unnamed one's name is empty), what its portal will change. A portal bound again
    /// forgets what it held. Returns false when a portal's changes had to be forgotten unrun
    /// (too many pending): the server's settings are then the server's to tell.
    pub(super) fn bind(&mut self, msg: &[u8], statements: &SettingStatements) -> bool {
        let mut body = &msg[5..];
        let (Some(portal), Some(name)) = (proto::cbytes(&mut body), proto::cbytes(&mut body))
        else {
            return true;
        };
        // A portal bound again is another statement's (found by a regression hunt: a SET
        // bound to the unnamed portal, then a SELECT, made the SET's change at the Execute).
        self.pending.retain(|(p, _)| p != portal);
        let Some(fx) = statements.get(name) else {
            return true;
        };
        let mut bound = Bound {
            changes: fx.settings.clone(),
            unknown: false,
            statements: fx.statements,
        };
        if !fx.param_settings.is_empty() {
            let params = batch::bind_params(&msg[5..]);
            for (setting, n) in &fx.param_settings {
                let param = n.checked_sub(1).and_then(|i| params.get(i));
                match param.map(|p| p.value.as_deref()) {
                    // Text travels as UTF-8 in both formats; set_config's value is text.
                    Some(Some(v)) => match std::str::from_utf8(v) {
                        Ok(v) => bound.changes.push(Change::set_config(setting, v)),
                        Err(_) => bound.unknown = true,
                    },
                    // set_config with NULL resets the setting.
                    Some(None) => bound.changes.push(Change::Reset(setting.clone())),
                    None => bound.unknown = true,
                }
            }
        }
        // A portal lives until its transaction ends (an Execute of one that is gone fails,
        // and a failed segment's changes are dropped), or until it is bound again.
        let kept = self.pending.len() < MAX_PENDING;
        if !kept {
            self.pending.remove(0);
        }
        self.pending.push((portal.to_vec(), bound));
        kept
    }

    /// An Execute in `segment`: its portal's changes are made.
    pub(super) fn execute(&mut self, msg: &[u8], segment: u64, track: &mut Track) {
        let mut body = &msg[5..];
        let Some(portal) = proto::cbytes(&mut body) else {
            return;
        };
        let Some(i) = self.pending.iter().position(|(p, _)| p == portal) else {
            return;
        };
        let (_, bound) = self.pending.swap_remove(i);
        if bound.unknown {
            track.unknown = Some(segment);
        }
        let fx = Effects {
            settings: bound.changes,
            statements: bound.statements,
            ..Effects::default()
        };
        state::record_settings(&fx, segment, track);
    }
}
