//! Open-loop load generator for bench/overload.sh: sends RATE requests per second for SECS
//! seconds regardless of how fast answers come (unlike wrk's closed loop), and prints one JSON
//! line: goodput, latency percentiles of successful and of rejected requests, and how many
//! rejections carried Retry-After. Usage: loadgen URL RATE SECS

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Default)]
struct Tally {
    ok: Vec<f64>,
    rejected: Vec<f64>,
    with_retry_after: u64,
    other: u64,
    errors: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, rate, secs) = match &args[..] {
        [u, r, s] => (
            u.clone(),
            r.parse::<f64>().unwrap_or(100.0),
            s.parse::<f64>().unwrap_or(5.0),
        ),
        _ => {
            eprintln!("usage: loadgen URL RATE SECS");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build_http();
        let uri: hyper::Uri = url.parse().unwrap_or_else(|e| panic!("url: {e}"));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let start = Instant::now();
        let total = (rate * secs) as u64;
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (client, uri, tally) = (client.clone(), uri.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let res = tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await;
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match res {
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        let retry_after = resp.headers().contains_key("retry-after");
                        drop(t);
                        let _ = resp.into_body().collect().await;
                        let ms = t0.elapsed().as_secs_f64() * 1000.0;
                        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                        match status {
                            200..=299 => t.ok.push(ms),
                            503 | 429 => {
                                t.rejected.push(ms);
                                t.with_retry_after += u64::from(retry_after);
                            }
                            _ => t.other += 1,
                        }
                    }
                    _ => t.errors += 1,
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        let ok = t.ok.len();
        let rejected = t.rejected.len();
        let (ok_p50, ok_p99) = (pct(&mut t.ok, 0.50), pct(&mut t.ok, 0.99));
        let rej_p99 = pct(&mut t.rejected, 0.99);
        println!(
            "{{\"sent\":{total},\"ok\":{ok},\"goodput_rps\":{:.1},\"ok_p50_ms\":{ok_p50:.2},\"ok_p99_ms\":{ok_p99:.2},\"rejected\":{rejected},\"rejected_p99_ms\":{rej_p99:.2},\"rejected_with_retry_after\":{},\"other_status\":{},\"errors\":{}}}",
            ok as f64 / elapsed.max(0.001),
            t.with_retry_after,
            t.other,
            t.errors
        );
    });
}
