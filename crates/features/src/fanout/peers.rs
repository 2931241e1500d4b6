//! The other instances on the bus as this one hears them: who is a member (a heartbeat within
//! [`MEMBER_TTL`]), and the last sequence number heard from each publisher, so that a message
//! missed on the way here is noticed — by the next message's number, or by the next heartbeat,
//! which carries the publisher's last number — instead of passing unseen.

use std::collections::HashMap;
use std::time::Duration;

use scalegate_core::Tick;

use super::envelope::PeerId;

/// How often each instance announces itself.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// An instance unheard for this long no longer counts as a member.
pub(crate) const MEMBER_TTL: Duration = Duration::from_millis(3_500);
/// A publisher unheard for this long is forgotten altogether.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// How a message or heartbeat fits what was heard before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// The next in line (or the first heard from this publisher).
    Next,
    /// Something from this publisher was missed.
    Gap,
    /// Already heard: drop it.
    Repeat,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    /// The last sequence number heard (None: not known since the last reset).
    last: Option<u64>,
    /// Its last heartbeat (None: only messages heard).
    beat: Option<Tick>,
    /// Last heard from at all.
    heard: Tick,
}

/// Members and sequence numbers.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    peers: HashMap<PeerId, Peer>,
}

impl Peers {
    fn peer(&mut self, id: PeerId, now: Tick) -> &mut Peer {
        let p = self.peers.entry(id).or_insert(Peer {
            last: None,
            beat: None,
            heard: now,
        });
        p.heard = now;
        p
    }

    /// A message numbered `seq` from `from`.
    pub(crate) fn message(&mut self, from: PeerId, seq: u64, now: Tick) -> Fit {
        let p = self.peer(from, now);
        match p.last {
            Some(last) if seq <= last => Fit::Repeat,
            Some(last) if seq != last + 1 => {
                p.last = Some(seq);
                Fit::Gap
            }
            _ => {
                p.last = Some(seq);
                Fit::Next
            }
        }
    }

    /// A heartbeat: `from` has sent up to `last_seq`; `alive` false when it leaves.
    pub(crate) fn heartbeat(&mut self, from: PeerId, last_seq: u64, alive: bool, now: Tick) -> Fit {
        let p = self.peer(from, now);
        let fit = match p.last {
            Some(last) if last_seq > last => Fit::Gap,
            _ => Fit::Next,
        };
        p.last = Some(p.last.map_or(last_seq, |l| l.max(last_seq)));
        p.beat = Some(now);
        if !alive {
            self.peers.remove(&from);
        }
        fit
    }

    /// Instances that sent a heartbeat within [`MEMBER_TTL`] and have not left.
    pub(crate) fn members(&self, now: Tick) -> usize {
        let since = Tick(now.0.saturating_sub(MEMBER_TTL.as_nanos() as u64));
        self.peers
            .values()
            .filter(|p| p.beat.is_some_and(|b| b >= since))
            .count()
    }

    /// Forgets every publisher's last number (this instance missed an unknown stretch and has
    /// cut its subscribers off: what comes next starts a new line).
    pub(crate) fn reset_numbers(&mut self) {
        for p in self.peers.values_mut() {
            p.last = None;
        }
    }

    /// Drops publishers unheard for a minute.
    pub(crate) fn prune(&mut self, now: Tick) {
        let since = Tick(now.0.saturating_sub(FORGET_AFTER.as_nanos() as u64));
        self.peers.retain(|_, p| p.heard >= since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn numbers_in_line_pass_a_jump_is_a_gap_and_a_repeat_is_dropped() {
        let mut p = Peers::default();
        let t = Tick(S);
        assert_eq!(p.message(1, 7, t), Fit::Next, "the first sets the line");
        assert_eq!(p.message(1, 8, t), Fit::Next);
        assert_eq!(p.message(1, 8, t), Fit::Repeat);
        assert_eq!(p.message(1, 10, t), Fit::Gap);
        assert_eq!(
            p.message(1, 11, t),
            Fit::Next,
            "the line goes on from the jump"
        );
        assert_eq!(
            p.message(2, 1, t),
            Fit::Next,
            "each publisher has its own line"
        );
        p.reset_numbers();
        assert_eq!(
            p.message(1, 20, t),
            Fit::Next,
            "after a reset any number starts"
        );
    }

    #[test]
    fn a_heartbeat_reveals_a_missed_last_message() {
        let mut p = Peers::default();
        let t = Tick(S);
        assert_eq!(p.heartbeat(1, 5, true, t), Fit::Next);
        assert_eq!(p.message(1, 6, t), Fit::Next);
        assert_eq!(p.heartbeat(1, 6, true, t), Fit::Next);
        assert_eq!(p.heartbeat(1, 7, true, t), Fit::Gap, "7 never arrived");
        assert_eq!(
            p.message(1, 7, t),
            Fit::Repeat,
            "late: already counted as missed"
        );
        assert_eq!(p.message(1, 8, t), Fit::Next);
    }

    #[test]
    fn members_are_those_with_a_recent_heartbeat() {
        let mut p = Peers::default();
        p.heartbeat(1, 0, true, Tick(S));
        p.heartbeat(2, 0, true, Tick(3 * S));
        p.message(3, 1, Tick(3 * S));
        assert_eq!(
            p.members(Tick(3 * S)),
            2,
            "messages alone do not make a member"
        );
        assert_eq!(p.members(Tick(5 * S)), 1, "1 is 4 s silent");
        p.heartbeat(2, 0, false, Tick(5 * S));
        assert_eq!(p.members(Tick(5 * S)), 0, "2 left");
        p.prune(Tick(100 * S));
        assert!(p.peers.is_empty());
    }
}
