//! Addresses the process binds that cannot all be bound: the listeners, the admin listener and
//! the pooler's. Equal addresses are not the only clash: `0.0.0.0:P` takes port P on every IPv4
//! address, and `[::]:P` (dual-stack, Linux's default) on every address. `check` says so at the
//! second one's line, rather than `run` failing with the OS's "address in use".

use std::net::SocketAddr;
use std::ops::Range;

use super::raw::RawConfig;
use super::validate::Check;

/// One address the process binds, named for the message, with where the file says it.
struct Bind {
    what: String,
    addr: SocketAddr,
    span: Option<Range<usize>>,
}

/// Reports every pair of binds that clash. `admin` is the admin listener's address (its
/// default when the file names none).
pub(super) fn clashes(c: &mut Check, raw: &RawConfig, admin: SocketAddr) {
    let mut binds: Vec<Bind> = raw
        .listeners
        .iter()
        .filter_map(|l| {
            let l = l.get_ref();
            Some(Bind {
                what: format!("listener {:?}", l.name.get_ref()),
                addr: l.bind.get_ref().parse().ok()?,
                span: Some(l.bind.span()),
            })
        })
        .collect();
    binds.push(Bind {
        what: "admin.listen".into(),
        addr: admin,
        span: raw.admin.listen.as_ref().map(|l| l.span()),
    });
    if let Some(pg) = &raw.postgres
        && let Ok(addr) = pg.get_ref().listen.get_ref().parse()
    {
        binds.push(Bind {
            what: "postgres.listen".into(),
            addr,
            span: Some(pg.get_ref().listen.span()),
        });
    }
    for (i, later) in binds.iter().enumerate() {
        for earlier in &binds[..i] {
            // Two listeners on one address are reported where listeners are checked.
            let both_listeners =
                later.what.starts_with("listener") && earlier.what.starts_with("listener");
            if !clash(earlier.addr, later.addr) || (both_listeners && earlier.addr == later.addr) {
                continue;
            }
            let Some(span) = later.span.clone().or_else(|| earlier.span.clone()) else {
                continue;
            };
            c.err(
                span,
                format!(
                    "{} {} and {} {} cannot both be bound: the same port on overlapping addresses",
                    later.what, later.addr, earlier.what, earlier.addr
                ),
            );
        }
    }
}

/// Whether binding `a` and then `b` fails: the same port (0 asks for any) on the same address,
/// or one of them the wildcard covering the other.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use super::clash;

    #[test]
    fn wildcards_cover_their_family_and_dual_stack_covers_both() {
        let a = |s: &str| s.parse().expect("address");
        assert!(clash(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(clash(a("0.0.0.0:80"), a("10.0.0.1:80")));
        assert!(clash(a("[::]:80"), a("0.0.0.0:80")));
        assert!(clash(a("[::1]:80"), a("[::]:80")));
        assert!(!clash(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!clash(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!clash(a("0.0.0.0:0"), a("0.0.0.0:0")));
    }
}
