//! Connecting to NATS for a subscription, the same way for every user (the cache's purge bus,
//! the fan-out bus): the client retries its first connection and then reconnects and
//! resubscribes by itself, so this is called once.

/// Connects and subscribes to `subject`; None (with a warning naming `role`) when NATS refuses.
/// Returns after the subscription is registered with the server, so publishing may start. The
/// connection's events (disconnected, connected again, …) go to `events`: messages published
/// while it was down are not delivered, and the caller may have to make up for them.
pub async fn subscribe(
    url: &str,
    subject: String,
    role: &'static str,
    events: tokio::sync::mpsc::Sender<async_nats::Event>,
) -> Option<(async_nats::Client, async_nats::Subscriber)> {
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .event_callback(move |e| {
            let events = events.clone();
            async move {
                let _ = events.send(e).await;
            }
        });
    let client = match options.connect(url).await {
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

/// Returns once the server has everything published on `client` before the call: a flush
/// only writes to the socket (async-nats makes no PING/PONG round trip for it), so a request
/// on a fresh inbox nobody serves goes after it, and the server's "no responders" answer,
/// sent once it has handled everything before it on the connection, is the acknowledgement.
/// Err says why; the messages may or may not have reached the server.
pub async fn acknowledged(
    client: &async_nats::Client,
    within: std::time::Duration,
) -> Result<(), String> {
    use async_nats::client::RequestErrorKind;
    let asked = client.request(client.new_inbox(), Default::default());
    match tokio::time::timeout(within, asked).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) => Err(format!("nats: {e}")),
        Err(_) => Err(format!("nats did not confirm within {within:?}")),
    }
}
