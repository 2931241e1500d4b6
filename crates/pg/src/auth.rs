//! Checking a client's password the way a PostgreSQL server does: SCRAM-SHA-256 (RFC 5802 /
//! 7677, no channel binding) and md5. Secrets are derived once from the configured password.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// A user's SCRAM verifier: what a server stores instead of the password.
#[derive(Clone, Debug)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramSecret {
    /// Derives a verifier with a fresh random salt.
    pub fn new(password: &str) -> Option<ScramSecret> {
        ScramSecret::parse(&postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
    }

    /// A verifier for a user that does not exist, as PostgreSQL makes one: the exchange runs
    /// as for a real user and fails at its end, so a client cannot tell unknown names from
    /// known ones before it authenticates. The salt is the same for a name every time (a real
    /// user's is too) and differs between names; the keys are random, so no proof matches.
    pub fn mock(user: &str) -> ScramSecret {
        static NONCE: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let nonce = NONCE.get_or_init(rand::random);
        let salt = Sha256::new()
            .chain_update(nonce)
            .chain_update(user.as_bytes())
            .finalize();
        ScramSecret {
            iterations: 4096,
            salt: salt[..16].to_vec(),
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (as in pg_authid).
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iter.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        })
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// The server side of one SCRAM exchange.
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message does not follow the grammar.
    #[error("malformed SCRAM message")]
    Malformed,
    /// Channel binding was requested; it is not offered.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The proof does not match the password.
    #[error("password authentication failed")]
    BadProof,
}

impl ScramServer {
    /// Handles client-first-message; returns the exchange and server-first-message.
    pub fn start(
        secret: &ScramSecret,
        client_first: &[u8],
    ) -> Result<(ScramServer, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed)?;
        let bare = match msg.split_once(",,") {
            Some(("n" | "y", bare)) => bare,
            Some((gs2, _)) if gs2.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        let mut ours = [0u8; 18];
        rand::fill(&mut ours);
        let nonce = format!("{client_nonce}{}", B64.encode(ours));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ScramServer {
                secret: secret.clone(),
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks client-final-message; returns server-final-message on success.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let nonce = without_proof
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed);
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::BadProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if Sha256::digest(&client_key).as_slice() != self.secret.stored_key.as_slice() {
            return Err(ScramError::BadProof);
        }
        let server_sig = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)))
    }
}

/// The md5 response a client must send for `user`/`password` and `salt`.
pub fn md5_expected(user: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn scram_exchange_with_the_client_library() {
        let secret = ScramSecret::new("s3cret").expect("secret");
        let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(&secret, client.message()).expect("start");
        client.update(first.as_bytes()).expect("update");
        let last = server.finish(client.message()).expect("finish");
        client.finish(last.as_bytes()).expect("server verified");
    }

    #[test]
    fn wrong_password_is_refused() {
        let secret = ScramSecret::new("s3cret").expect("secret");
        let mut client = ScramSha256::new(b"guess", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(&secret, client.message()).expect("start");
        client.update(first.as_bytes()).expect("update");
        assert_eq!(server.finish(client.message()), Err(ScramError::BadProof));
    }

    #[test]
    fn garbage_is_malformed() {
        let secret = ScramSecret::new("x").expect("secret");
        assert!(ScramServer::start(&secret, b"\xff\xfe").is_err());
        assert!(ScramServer::start(&secret, b"n,,n=,").is_err());
        assert_eq!(
            ScramServer::start(&secret, b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
    }
}
