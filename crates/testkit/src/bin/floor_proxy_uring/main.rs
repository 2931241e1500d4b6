//! `floor_proxy`'s work on io_uring instead of epoll, to measure what an io_uring data path saves
//! on this kernel (issue 19, point 3): `bench/http.sh FLOOR=1` runs both side by side.
//!
//! The user-space work is the same as `floor_proxy`'s: one thread, each client connection gets its
//! own keep-alive upstream connection (round robin at accept), received bytes are copied into a
//! per-direction buffer until httparse sees a whole message (bodies by `Content-Length`), and the
//! message is written through unchanged. Only the I/O differs, using what io_uring offers a proxy:
//!
//! - one multishot accept for the listener;
//! - one multishot receive per socket, into buffers the kernel picks from a registered buffer ring
//!   (no buffer held per idle connection, no re-arming per read);
//! - every send and re-arm queued and submitted together with the wait for completions: one
//!   `io_uring_enter` per loop turn, however many sockets were served.
//!
//! Not a proxy anyone should run (no timeouts, no errors sent, no chunked bodies).
//!
//! Usage: `floor_proxy_uring LISTEN UPSTREAM [UPSTREAM ...]`

#[cfg(target_os = "linux")]
mod bufring;
#[cfg(target_os = "linux")]
mod uring;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((listen, upstreams)) = args.split_first().filter(|(_, u)| !u.is_empty()) else {
        eprintln!("usage: floor_proxy_uring LISTEN UPSTREAM [UPSTREAM ...]");
        std::process::exit(2);
    };
    let upstreams = upstreams
        .iter()
        .map(|u| u.parse().map_err(std::io::Error::other))
        .collect::<std::io::Result<Vec<_>>>()?;
    uring::serve(listen, upstreams)
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("floor_proxy_uring needs Linux");
    std::process::exit(2);
}
