//! The files a config reads besides itself (certificates, keys, CAs): a change to one of them
//! reloads the config like a change to the file, so a rotated certificate is picked up without a
//! signal.

use std::path::{Path, PathBuf};

use super::raw::RawConfig;

/// Every TLS file `raw` names, resolved against `base`, without repeats.
pub(super) fn referenced(raw: &RawConfig, base: &Path) -> Vec<PathBuf> {
    let mut names: Vec<&str> = Vec::new();
    for l in &raw.listeners {
        if let Some(t) = &l.get_ref().tls {
            names.extend([t.get_ref().cert.as_str(), t.get_ref().key.as_str()]);
        }
    }
    for u in raw.upstreams.values() {
        if let Some(t) = &u.get_ref().tls {
            let t = t.get_ref();
            names.extend(
                [&t.ca, &t.cert, &t.key]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
    }
    if let Some(t) = raw.postgres.as_ref().and_then(|p| p.get_ref().tls.as_ref()) {
        names.extend([t.get_ref().cert.as_str(), t.get_ref().key.as_str()]);
    }
    let mut files: Vec<PathBuf> = names.into_iter().map(|n| base.join(n)).collect();
    files.sort();
    files.dedup();
    files
}
