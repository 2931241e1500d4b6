//! NATS settings shared by the cache's purges, fan-out and the job queue: the server URL and
//! the subjects. A subject NATS refuses (empty, a space, a wildcard, an empty token) used to
//! pass `check` and leave the feature answering 503 for good.

use std::ops::Range;

use toml::Spanned;

use super::validate::Check;

/// Checks `url` is a NATS URL; `key` names it in the message.
pub(super) fn url(c: &mut Check, url: &Spanned<String>, key: &str) {
    let u = url.get_ref();
    if !(u.starts_with("nats://") || u.starts_with("tls://")) {
        c.err(
            url.span(),
            format!(r#"{key} {u:?}: expected "nats://host:port""#),
        );
    }
}

/// Checks `value` is a subject (`prefix`: a subject and a final `.`, a name follows it);
/// reported at `span` (the table's URL: the key itself has no position of its own).
pub(super) fn subject(c: &mut Check, span: Range<usize>, value: &str, key: &str, prefix: bool) {
    let ok = match prefix {
        true => value.strip_suffix('.').is_some_and(valid_subject),
        false => valid_subject(value),
    };
    if !ok {
        let shape = match prefix {
            true => r#"a NATS subject and a final ".", e.g. "app.jobs.""#,
            false => r#"a NATS subject, e.g. "app.purge""#,
        };
        c.err(
            span,
            format!("{key} {value:?}: expected {shape} (no spaces, * or >)"),
        );
    }
}

/// Dot-separated tokens, none empty, of characters other than spaces, controls and the
/// wildcards (NATS takes UTF-8 subjects).
fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
        })
}

#[cfg(test)]
mod tests {
    use super::valid_subject;

    #[test]
    fn subjects() {
        for ok in ["a", "scalegate.purge", "a-b_c.d1", "app.purge-é"] {
            assert!(valid_subject(ok), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "x\ty"] {
            assert!(!valid_subject(bad), "{bad}");
        }
    }
}
