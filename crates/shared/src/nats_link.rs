//! Connecting to NATS for a subscription, the same way for every user (the cache's purge bus,
//! the fan-out bus): the client retries its first connection and then reconnects and
//! resubscribes by itself, so this is called once.

/// Connects and subscribes to `subject`; None (with a warning naming `role`) when NATS refuses.
/// Returns after the subscription is registered with the server, so publishing may start.
pub async fn subscribe(
    url: &str,
    subject: String,
    role: &'static str,
) -> Option<(async_nats::Client, async_nats::Subscriber)> {
    let client = match async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, url, role, "NATS off: cannot connect");
            return None;
        }
    };
    let sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, subject, role, "NATS off: cannot subscribe");
            return None;
        }
    };
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, role, "NATS flush failed");
    }
    tracing::info!(subject, role, "subscribed on NATS");
    Some((client, sub))
}
