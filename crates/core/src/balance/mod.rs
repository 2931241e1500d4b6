//! Endpoint choice: which member of an upstream takes the next request.
//!
//! [`EndpointSet::pick`] first decides the candidate set (available endpoints, or every
//! non-drained one in panic mode; only the gateway's own zone while it is healthy enough, when
//! the upstream has zone affinity), then asks the configured algorithm. Each algorithm lives in its
//! own file and sees candidates only through [`Candidates`].

mod least_conn;
mod p2c;
mod ring;
mod round_robin;
mod weighted;
mod zone;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use rand::Rng;

pub use ring::Ring;

use crate::{EndpointState, Tick};

/// The balancing algorithm of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Each candidate in turn.
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm).
    Weighted,
    /// Fewest in-flight requests per unit of weight.
    LeastConn,
    /// Power of two random choices, cost = peak-EWMA latency × (in-flight + 1).
    P2cEwma,
    /// Consistent hash of the client address.
    IpHash,
    /// Sticky by cookie; first requests are spread round robin.
    Cookie,
    /// Consistent hash of a request key (header, cookie or path).
    ConsistentHash,
}

/// One endpoint as the balancer sees it.
#[derive(Clone, Debug)]
pub struct Member {
    /// Configured weight (≥ 1).
    pub weight: u32,
    /// Stable identity hash (of the address); also the sticky cookie value.
    pub id_hash: u64,
    /// Shared runtime state.
    pub state: Arc<EndpointState>,
    /// In the gateway's own availability zone.
    pub local: bool,
}

/// Set-wide balancing knobs.
#[derive(Clone, Debug)]
pub struct SetPolicy {
    /// The algorithm.
    pub balance: Balance,
    /// Slow-start window after an endpoint returns (None: off).
    pub slow_start: Option<Duration>,
    /// Below this percentage of available endpoints, balance over all of them (0: off).
    pub panic_threshold_percent: u32,
    /// Zone affinity: stay on local-zone members while at least this percentage of them are
    /// available (None: off).
    pub zone_min_available_percent: Option<u32>,
}

/// What the proxy knows of a request that a balancer may use.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickRequest {
    /// Hash of the consistent-hash key (client IP for `IpHash`, the configured key otherwise).
    pub hash_key: Option<u64>,
    /// Endpoint id hash from the sticky cookie, if the request carried one.
    pub sticky: Option<u64>,
    /// Endpoints this request already tried (and failed on): avoided while any other will do,
    /// first in the local zone, then in any zone.
    pub tried: Tried,
}

/// A set of member indices (the first 256; later ones are not remembered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried([u64; 4]);

impl Tried {
    /// Adds member `i`.
    pub fn insert(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    /// Whether member `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// The balancer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index into the set's members.
    pub index: usize,
    /// Chosen in panic mode (too few available endpoints).
    pub panic: bool,
    /// The response should set the sticky cookie to this member's id.
    pub set_sticky: bool,
}

/// An upstream's endpoints plus the algorithm's own state.
#[derive(Debug)]
pub struct EndpointSet {
    members: Vec<Member>,
    policy: SetPolicy,
    cursor: AtomicUsize,
    weighted: weighted::SmoothState,
    ring: Ring,
    typical: p2c::Typical,
}

/// The view of candidates an algorithm gets: which members may be chosen and at what weight.
pub(crate) struct Candidates<'a> {
    members: &'a [Member],
    now: Tick,
    panic: bool,
    local_only: bool,
    tried: Tried,
    slow_start: Option<Duration>,
    /// The fleet's typical latency (p2c only; 0 otherwise).
    typical: f64,
}

impl Candidates<'_> {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn ok(&self, i: usize) -> bool {
        if self.tried.contains(i) || (self.local_only && !self.members[i].local) {
            return false;
        }
        let s = &self.members[i].state;
        // Panic mode overrides pessimistic health checks, never an open breaker: live traffic
        // just showed that endpoint failing.
        if self.panic {
            !s.is_draining() && s.breaker_allows(self.now)
        } else {
            s.is_available(self.now)
        }
    }

    /// Weight after slow start, never below a tenth of a unit.
    fn effective_weight(&self, i: usize) -> f64 {
        let m = &self.members[i];
        let weight = m.state.weight_override().unwrap_or(m.weight).max(1);
        f64::from(weight) * m.state.slow_start_factor(self.now, self.slow_start)
    }

    fn ramp(&self, i: usize) -> f64 {
        self.members[i]
            .state
            .slow_start_factor(self.now, self.slow_start)
    }

    fn state(&self, i: usize) -> &EndpointState {
        &self.members[i].state
    }
}

impl EndpointSet {
    /// Builds the set; the hash ring is built once here, not per request.
    pub fn new(members: Vec<Member>, policy: SetPolicy) -> Self {
        let ring = match policy.balance {
            Balance::IpHash | Balance::ConsistentHash => Ring::new(&members),
            _ => Ring::default(),
        };
        EndpointSet {
            weighted: weighted::SmoothState::new(members.len()),
            members,
            policy,
            cursor: AtomicUsize::new(0),
            ring,
            typical: p2c::Typical::default(),
        }
    }

    /// The members, in config order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The set's policy.
    pub fn policy(&self) -> &SetPolicy {
        &self.policy
    }

    /// Number of members available at `now`.
    pub fn available_count(&self, now: Tick) -> usize {
        self.members
            .iter()
            .filter(|m| m.state.is_available(now))
            .count()
    }

    /// How many members a request could be sent to at `now`: the available ones, or in panic
    /// mode those neither drained nor behind an open breaker (panic mode overrides health
    /// checks only). Zero means every request gets 503.
    pub fn pickable_count(&self, now: Tick) -> usize {
        if !self.in_panic(now) {
            return self.available_count(now);
        }
        self.members
            .iter()
            .filter(|m| !m.state.is_draining() && m.state.breaker_allows(now))
            .count()
    }

    /// Records a live request's outcome on member `index` and moves its breaker, holding an
    /// ejection back when the upstream's `max_ejection_percent` of members are already out.
    pub fn record_outcome(
        &self,
        index: usize,
        success: bool,
        policy: &crate::outlier::OutlierPolicy,
        now: Tick,
    ) -> Option<crate::endpoint::BreakerEvent> {
        let member = self.members.get(index)?;
        member
            .state
            .record_outcome_capped(success, policy, now, || {
                let ejected = self
                    .members
                    .iter()
                    .enumerate()
                    // Breakers that take capacity away: an endpoint the health checks already
                    // took out loses nothing more when its breaker opens too, so it does not
                    // count (counted, it held the last dead endpoint's breaker shut and panic
                    // mode kept sending it traffic: a regression hunt, session 20).
                    .filter(|(i, m)| {
                        *i != index
                            && matches!(
                                m.state.availability(now),
                                crate::endpoint::Availability::Ejected(_)
                                    | crate::endpoint::Availability::HalfOpen
                            )
                    })
                    .count();
                policy.may_eject(ejected, self.members.len())
            })
    }

    /// Whether too few members are available, so balancing spreads over all of them.
    pub fn in_panic(&self, now: Tick) -> bool {
        let total = self.members.len();
        let pct = self.policy.panic_threshold_percent as usize;
        pct > 0 && total > 0 && self.available_count(now) * 100 < total * pct
    }

    /// Whether zone affinity keeps balancing in the local zone at `now`.
    pub fn local_zone_only(&self, now: Tick) -> bool {
        !self.in_panic(now) && self.local_zone_holds(now)
    }

    fn local_zone_holds(&self, now: Tick) -> bool {
        self.policy
            .zone_min_available_percent
            .is_some_and(|pct| zone::local_only(&self.members, pct, now))
    }

    /// Chooses an endpoint for a request, or None when no endpoint may take it.
    ///
    /// Endpoints the request already tried are left out: when every local one has been tried,
    /// the zone preference is dropped (a retry leaves the zone), and only when no untried
    /// endpoint is left anywhere is a tried one taken again.
    pub fn pick<R: Rng + ?Sized>(&self, req: &PickRequest, now: Tick, rng: &mut R) -> Option<Pick> {
        let panic = self.in_panic(now);
        let local_only = !panic && self.local_zone_holds(now);
        let mut c = Candidates {
            members: &self.members,
            now,
            panic,
            local_only,
            tried: req.tried,
            slow_start: self.policy.slow_start,
            typical: match self.policy.balance {
                Balance::P2cEwma => self.typical.get(&self.members, now),
                _ => 0.0,
            },
        };
        let mut picked = self.pick_in(&c, req, rng);
        if picked.is_none() && c.local_only {
            c.local_only = false;
            picked = self.pick_in(&c, req, rng);
        }
        if picked.is_none() && !c.tried.is_empty() {
            c.tried = Tried::default();
            c.local_only = local_only;
            picked = self.pick_in(&c, req, rng);
            if picked.is_none() && c.local_only {
                c.local_only = false;
                picked = self.pick_in(&c, req, rng);
            }
        }
        picked.map(|(index, set_sticky)| Pick {
            index,
            panic,
            set_sticky,
        })
    }

    fn pick_in<R: Rng + ?Sized>(
        &self,
        c: &Candidates<'_>,
        req: &PickRequest,
        rng: &mut R,
    ) -> Option<(usize, bool)> {
        let plain = |i| Some((i, false));
        match self.policy.balance {
            Balance::RoundRobin => round_robin::pick(c, &self.cursor, rng).and_then(plain),
            Balance::Weighted => self.weighted.pick(c).and_then(plain),
            Balance::LeastConn => least_conn::pick(c, &self.cursor).and_then(plain),
            Balance::P2cEwma => p2c::pick(c, rng).and_then(plain),
            Balance::IpHash | Balance::ConsistentHash => match req.hash_key {
                Some(key) => self.ring.pick(c, key).and_then(plain),
                None => round_robin::pick(c, &self.cursor, rng).and_then(plain),
            },
            Balance::Cookie => {
                let stuck = req
                    .sticky
                    .and_then(|h| (0..c.len()).find(|&i| self.members[i].id_hash == h && c.ok(i)));
                match stuck {
                    Some(i) => Some((i, false)),
                    None => round_robin::pick(c, &self.cursor, rng).map(|i| (i, true)),
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::OutlierPolicy;
    use crate::hash::stable_hash;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    pub(crate) fn set(n: usize, balance: Balance) -> EndpointSet {
        set_weighted(&vec![1; n], balance)
    }

    pub(crate) fn set_weighted(weights: &[u32], balance: Balance) -> EndpointSet {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                weight: *w,
                id_hash: stable_hash(format!("10.0.0.{i}:80").as_bytes()),
                state: Arc::new(EndpointState::default()),
                local: false,
            })
            .collect();
        EndpointSet::new(
            members,
            SetPolicy {
                balance,
                slow_start: None,
                panic_threshold_percent: 50,
                zone_min_available_percent: None,
            },
        )
    }

    pub(crate) fn counts(set: &EndpointSet, n: usize, req: PickRequest) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0; set.members().len()];
        for _ in 0..n {
            let p = set.pick(&req, Tick(1), &mut rng).expect("pick");
            counts[p.index] += 1;
        }
        counts
    }

    fn eject(set: &EndpointSet, i: usize) {
        let p = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        set.members()[i].state.record_outcome(false, &p, Tick(1));
    }

    pub(crate) fn fail_probes(set: &EndpointSet, i: usize) {
        let p = crate::HealthPolicy {
            path: "/".into(),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            healthy_after: 1,
            unhealthy_after: 1,
        };
        set.members()[i].state.record_probe(false, &p, Tick(1));
    }

    #[test]
    fn round_robin_spreads_evenly() {
        assert_eq!(
            counts(&set(3, Balance::RoundRobin), 300, PickRequest::default()),
            [100; 3]
        );
    }

    #[test]
    fn unavailable_endpoint_gets_nothing() {
        let s = set(3, Balance::RoundRobin);
        eject(&s, 1);
        let c = counts(&s, 300, PickRequest::default());
        assert_eq!(c, [150, 0, 150]);
    }

    #[test]
    fn panic_mode_spreads_over_all_when_too_few_available() {
        let s = set(4, Balance::RoundRobin);
        fail_probes(&s, 0);
        fail_probes(&s, 1);
        fail_probes(&s, 2);
        assert!(s.in_panic(Tick(1)));
        let c = counts(&s, 400, PickRequest::default());
        assert_eq!(c, [100; 4]);
    }

    #[test]
    fn panic_mode_does_not_override_open_breakers() {
        let s = set(2, Balance::RoundRobin);
        eject(&s, 0);
        eject(&s, 1);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            s.pick(&PickRequest::default(), Tick(2), &mut rng),
            None,
            "every breaker open: fail fast"
        );
    }

    #[test]
    fn no_candidates_gives_none() {
        let s = set(2, Balance::LeastConn);
        s.members()[0].state.set_draining(true);
        s.members()[1].state.set_draining(true);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(s.pick(&PickRequest::default(), Tick(1), &mut rng), None);
    }

    #[test]
    fn tried_endpoints_are_avoided_unless_they_are_the_only_choice() {
        let s = set(3, Balance::RoundRobin);
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        let req = PickRequest {
            tried,
            ..PickRequest::default()
        };
        assert_eq!(counts(&s, 10, req), [0, 10, 0]);
        let single = set(1, Balance::RoundRobin);
        let mut only = Tried::default();
        only.insert(0);
        let req = PickRequest {
            tried: only,
            ..PickRequest::default()
        };
        assert_eq!(counts(&single, 3, req), [3]);
        let mut far = Tried::default();
        far.insert(300);
        assert!(far.is_empty(), "beyond 256 members nothing is remembered");
    }

    #[test]
    fn cookie_sticks_to_the_named_endpoint() {
        let s = set(3, Balance::Cookie);
        let id = s.members()[2].id_hash;
        let mut rng = StdRng::seed_from_u64(1);
        let req = PickRequest {
            sticky: Some(id),
            ..PickRequest::default()
        };
        for _ in 0..10 {
            let p = s.pick(&req, Tick(1), &mut rng).expect("pick");
            assert_eq!((p.index, p.set_sticky), (2, false));
        }
        let fresh = s
            .pick(&PickRequest::default(), Tick(1), &mut rng)
            .expect("pick");
        assert!(fresh.set_sticky);
        eject(&s, 2);
        let moved = s.pick(&req, Tick(1), &mut rng).expect("pick");
        assert!(
            moved.index != 2 && moved.set_sticky,
            "re-stuck elsewhere when its endpoint is out"
        );
    }

    #[test]
    fn ejections_stop_at_max_ejection_percent_so_an_upstream_keeps_serving() {
        use crate::endpoint::BreakerEvent;
        let p = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        // One endpoint: never ejected by live traffic, whatever it answers.
        let one = set(1, Balance::RoundRobin);
        assert_eq!(
            one.record_outcome(0, false, &p, Tick(1)),
            Some(BreakerEvent::Held)
        );
        assert!(
            one.pick(&PickRequest::default(), Tick(2), &mut rand::rng())
                .is_some()
        );
        // Four endpoints, 50%: two may go, the third stays.
        let four = set(4, Balance::RoundRobin);
        for i in 0..2 {
            assert!(matches!(
                four.record_outcome(i, false, &p, Tick(1)),
                Some(BreakerEvent::Opened(_))
            ));
        }
        assert_eq!(
            four.record_outcome(2, false, &p, Tick(1)),
            Some(BreakerEvent::Held)
        );
        assert_eq!(four.available_count(Tick(2)), 2);
        // 100% restores "eject everything".
        let all = OutlierPolicy {
            max_ejection_percent: 100,
            ..p
        };
        assert!(matches!(
            one.record_outcome(0, false, &all, Tick(3)),
            Some(BreakerEvent::Opened(_))
        ));
    }
}
