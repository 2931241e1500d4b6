//! Places on the admin listener: at most [`MOST_CONNECTIONS`] connections at once, and at most
//! [`MOST_PER_ADDRESS`] from one address, so that a client holding many (thousands of
//! half-sent requests) neither takes the file descriptors the data path shares nor shuts out
//! another host's readiness probe.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Most admin connections open at once; more are closed as they are accepted (a probe's
/// finding: 3,000 half-sent requests held for good).
const MOST_CONNECTIONS: usize = 1024;

/// Most admin connections open at once from one address (a probe's finding: with 1,024 held by
/// one client, `/ready` went unanswered for everyone).
const MOST_PER_ADDRESS: usize = 64;

/// The connections open, by address.
#[derive(Debug, Default)]
pub struct Places {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    places: Arc<Places>,
    ip: IpAddr,
}

impl Places {
    /// A place for a connection from `ip`, unless the listener or that address is full.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Place> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_address) = &mut *open;
        let mine = by_address.entry(ip).or_default();
        if *total >= MOST_CONNECTIONS || *mine >= MOST_PER_ADDRESS {
            if *mine == 0 {
                by_address.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Place {
            places: self.clone(),
            ip,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.places.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_address) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_place_and_places_come_back() {
        let places = Arc::new(Places::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held: Vec<Place> = (0..MOST_PER_ADDRESS)
            .filter_map(|_| places.take(a))
            .collect();
        assert_eq!(held.len(), MOST_PER_ADDRESS);
        assert!(places.take(a).is_none(), "a is full");
        let other = places.take(b).expect("b still gets a place");
        drop(held);
        drop(other);
        let open = places.open.lock().expect("lock");
        assert_eq!(open.0, 0);
        assert!(open.1.is_empty(), "{:?}", open.1);
    }

    #[test]
    fn the_listener_is_full_at_its_cap() {
        let places = Arc::new(Places::default());
        let held: Vec<Place> = (0..MOST_CONNECTIONS)
            .filter_map(|i| places.take(IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8])))
            .collect();
        assert_eq!(held.len(), MOST_CONNECTIONS);
        assert!(places.take([10, 9, 9, 9].into()).is_none());
    }
}
