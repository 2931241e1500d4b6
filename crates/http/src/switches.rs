//! Runtime switches set through the admin API, outside the config and surviving reloads: a
//! route disabled (it answers with its fallback or 503) or shifting a share of its traffic to a
//! second upstream (canary). Endpoint drain and weight switches live on the endpoint's own state.
//!
//! The request path pays one relaxed load while no route switch is set.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// A route's switches.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteSwitch {
    /// Answer with the fallback or 503 instead of proxying.
    pub disabled: bool,
    /// Send this percentage of requests to this upstream instead.
    pub canary: Option<(String, u8)>,
}

/// All route switches.
#[derive(Debug, Default)]
pub struct Switches {
    any: AtomicBool,
    routes: RwLock<HashMap<String, RouteSwitch>>,
}

impl Switches {
    /// The switches of `route`, if any is set.
    pub fn route(&self, route: &str) -> Option<RouteSwitch> {
        if !self.any.load(Relaxed) {
            return None;
        }
        self.routes.read().ok()?.get(route).cloned()
    }

    /// Changes `route`'s switches with `f`; a route left with no switch is forgotten.
    pub fn update(&self, route: &str, f: impl FnOnce(&mut RouteSwitch)) {
        let Ok(mut routes) = self.routes.write() else {
            return;
        };
        let entry = routes.entry(route.to_string()).or_default();
        f(entry);
        if *entry == RouteSwitch::default() {
            routes.remove(route);
        }
        self.any.store(!routes.is_empty(), Relaxed);
    }

    /// Every route switch, for the admin view.
    pub fn all(&self) -> HashMap<String, RouteSwitch> {
        self.routes.read().map(|r| r.clone()).unwrap_or_default()
    }
}
