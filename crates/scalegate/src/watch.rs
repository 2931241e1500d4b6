//! Watching the config file and the TLS files it names for changes (reload without SIGHUP).
//!
//! The directories are watched, not the files: editors and Kubernetes replace a file by rename
//! (Kubernetes swaps a `..data` link in a mounted ConfigMap or Secret), which a watch on the old
//! file would not see. Only the events that change a file are asked for. On Linux that is done
//! with inotify directly: the `notify` crate's watch also asks for every open, so with the config
//! in a directory other processes read from (`/etc`, a certificate directory, a file a backend
//! serves) each of their opens woke the gateway. Elsewhere `notify` is used, opens and all.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// The directories to watch and the file names that matter in them.
fn targets(config: &Path, files: &[PathBuf]) -> (Vec<PathBuf>, Vec<OsString>) {
    let dir_of = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let all: Vec<&Path> = std::iter::once(config)
        .chain(files.iter().map(PathBuf::as_path))
        .collect();
    let names = all
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect();
    let mut dirs: Vec<PathBuf> = all.iter().map(|p| dir_of(p)).collect();
    dirs.sort();
    dirs.dedup();
    (dirs, names)
}

/// Whether a change to `name` (in a watched directory) is one of ours.
fn matters(name: &std::ffi::OsStr, names: &[OsString]) -> bool {
    names.iter().any(|w| w == name) || name.to_string_lossy().starts_with("..data")
}

#[cfg(target_os = "linux")]
use linux::{Watch, watch};

#[cfg(not(target_os = "linux"))]
use portable::{Watch, watch};

/// Reports on `tx` every change to `config` or `files` (None, with a warning, when the watch
/// cannot be set up: SIGHUP still reloads). Dropping the returned watch stops it.
pub fn watch_files(
    config: &Path,
    files: &[PathBuf],
    tx: mpsc::UnboundedSender<()>,
) -> Option<Watch> {
    let (dirs, names) = targets(config, files);
    watch(&dirs, names, tx)
}

#[cfg(target_os = "linux")]
mod linux {
    use futures_util::StreamExt;
    use inotify::{EventMask, Inotify, WatchMask};

    use super::*;

    /// A running watch; dropping it stops it.
    #[derive(Debug)]
    pub struct Watch(tokio::task::JoinHandle<()>);

    impl Drop for Watch {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// Watches `dirs` for changes to `names`; the events are read on the calling Tokio runtime.
    pub fn watch(
        dirs: &[PathBuf],
        names: Vec<OsString>,
        tx: mpsc::UnboundedSender<()>,
    ) -> Option<Watch> {
        let inotify = Inotify::init()
            .map_err(
                |e| tracing::warn!(error = %e, "cannot watch config file; SIGHUP still reloads"),
            )
            .ok()?;
        // What writes, truncations, renames over, creations and removals do; not opens and
        // reads.
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO;
        for dir in dirs {
            if let Err(e) = inotify.watches().add(dir, mask) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; SIGHUP still reloads");
            }
        }
        let mut events = inotify
            .into_event_stream(vec![0u8; 4096])
            .map_err(
                |e| tracing::warn!(error = %e, "cannot watch config file; SIGHUP still reloads"),
            )
            .ok()?;
        Some(Watch(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "config file watch ended; SIGHUP still reloads");
                        return;
                    }
                };
                // Events were lost: one of them may have been ours.
                let lost = event.mask.contains(EventMask::Q_OVERFLOW);
                if lost || event.name.as_deref().is_some_and(|n| matters(n, &names)) {
                    let _ = tx.send(());
                }
            }
        })))
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    use notify::Watcher;

    use super::*;

    /// A running watch; dropping it stops it.
    pub type Watch = notify::RecommendedWatcher;

    /// Watches `dirs` for changes to `names` (opens included: `notify` asks for them).
    pub fn watch(
        dirs: &[PathBuf],
        names: Vec<OsString>,
        tx: mpsc::UnboundedSender<()>,
    ) -> Option<Watch> {
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !ev.kind.is_access()
                && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| matters(n, &names)))
            {
                let _ = tx.send(());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch config file; SIGHUP still reloads"))
        .ok()?;
        for dir in dirs {
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; SIGHUP still reloads");
            }
        }
        Some(w)
    }
}
