//! The real `scalegate` binary run on a config file in a temp dir.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::client::Client;
use crate::free_ports;

/// A running gateway process; killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The "public" listener.
    pub http: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    header: String,
}

impl GatewayProcess {
    /// Starts `bin run` on a config of a "public" listener and an admin listener on free ports,
    /// followed by `rest` (routes, upstreams, …); waits until /health answers.
    pub async fn start(bin: &str, rest: &str) -> GatewayProcess {
        Self::start_with(bin, "[runtime]\nworker_threads = 2\n", rest).await
    }

    /// Like [`Self::start`] with a custom `[runtime]`/`[log]`/`[lifecycle]` preamble.
    pub async fn start_with(bin: &str, preamble: &str, rest: &str) -> GatewayProcess {
        Self::start_full(bin, preamble, "", rest).await
    }

    /// Like [`Self::start_with`] with extra settings for the "public" listener.
    pub async fn start_full(
        bin: &str,
        preamble: &str,
        listener: &str,
        rest: &str,
    ) -> GatewayProcess {
        Self::start_custom(bin, preamble, "", listener, rest).await
    }

    /// The most general start: `preamble` first, `admin` extra `[admin]` keys, `listener` extra
    /// keys of the "public" listener, then `rest`. Fails at once if the process exits early.
    pub async fn start_custom(
        bin: &str,
        preamble: &str,
        admin: &str,
        listener: &str,
        rest: &str,
    ) -> GatewayProcess {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        Self::start_admin_on(bin, loopback, preamble, admin, listener, rest).await
    }

    /// Like [`Self::start_custom`] with the admin listener on `admin_ip` (another host's view
    /// of the admin API, from this machine's own non-loopback address).
    pub async fn start_admin_on(
        bin: &str,
        admin_ip: std::net::IpAddr,
        preamble: &str,
        admin: &str,
        listener: &str,
        rest: &str,
    ) -> GatewayProcess {
        // Free ports are picked, released, then bound by the gateway: a parallel test can take
        // one in between, and the gateway then exits with "address in use". Try fresh ports.
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            match Self::try_start(bin, admin_ip, [preamble, admin, listener, rest]).await {
                Ok(gw) => return gw,
                Err(status) if attempt < ATTEMPTS => {
                    eprintln!(
                        "gateway exited during startup ({status}); retrying with fresh ports"
                    );
                }
                Err(status) => panic!(
                    "gateway exited during startup ({status}) {ATTEMPTS} times; its stderr is above"
                ),
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// One start attempt; Err with the exit status if the process exits before /health answers.
    async fn try_start(
        bin: &str,
        admin_ip: std::net::IpAddr,
        [preamble, admin, listener, rest]: [&str; 4],
    ) -> Result<GatewayProcess, ExitStatus> {
        // Two distinct ports: with one for both, the public listener (proxying to a backend)
        // could answer the start-up check meant for the admin listener.
        let [http_port, admin_port] = free_ports();
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        let admin_addr = SocketAddr::new(admin_ip, admin_port);
        let header = format!(
            "{preamble}\n[admin]\nlisten = \"{admin_addr}\"\n{admin}\n\n[[listeners]]\nname = \"public\"\nbind = \"{http}\"\n{listener}\n\n"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config = dir.path().join("scalegate.toml");
        std::fs::write(&config, format!("{header}{rest}"))
            .unwrap_or_else(|e| panic!("write config: {e}"));
        let stdout = std::fs::File::create(dir.path().join("stdout.log"))
            .unwrap_or_else(|e| panic!("stdout file: {e}"));
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))
            .unwrap_or_else(|e| panic!("stderr file: {e}"));
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(stdout)
            .stderr(stderr)
            .env(
                "RUST_LOG",
                std::env::var("SG_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut gw = GatewayProcess {
            child: Some(child),
            _dir: dir,
            config,
            http,
            admin: admin_addr,
            header,
        };
        let c = Client::http1();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Ours only once our process listens on both ports: a port taken by another test's
        // gateway between free_ports and our bind answers /health while ours has exited.
        while c.get(admin_addr, "/health").await.is_err() || !gw.listens_on_both() {
            if let Some(st) = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                gw.child = None;
                eprintln!("{}", gw.stderr());
                return Err(st);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(gw)
    }

    /// Whether this process is the one listening on both of its ports.
    fn listens_on_both(&self) -> bool {
        self.child.as_ref().is_some_and(|c| {
            crate::listens_on(c.id(), self.http.port())
                && crate::listens_on(c.id(), self.admin.port())
        })
    }

    /// Rewrites the config file with the same listeners and a new `rest` (the file watcher and
    /// SIGHUP both pick it up).
    pub fn write_config(&self, rest: &str) {
        std::fs::write(&self.config, format!("{}{rest}", self.header))
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Replaces `from` by `to` in the config's fixed part (the admin and "public" listener
    /// settings) and rewrites the file with it: a reload then sees the change, and later
    /// [`Self::write_config`] calls keep it.
    pub fn edit_header(&mut self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap_or_else(|e| panic!("read: {e}"));
        assert!(
            self.header.contains(from),
            "{from:?} is not in the config's header"
        );
        self.header = self.header.replacen(from, to, 1);
        std::fs::write(&self.config, text.replacen(from, to, 1))
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Sends a signal (libc number) to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process wrote to stdout so far (the access log).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Fetches an admin path's body.
    pub async fn admin_get(&self, path: &str) -> String {
        Client::http1()
            .get(self.admin, path)
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failing test shows what the gateway logged (the test harness captures this).
        if std::thread::panicking() {
            eprintln!("--- gateway stderr ---\n{}", self.stderr());
        }
    }
}
