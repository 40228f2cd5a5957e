//! Bearer tokens for the HTTP API: what a browser or a script without a client certificate
//! presents (`Authorization: Bearer …`).
//!
//! A token is self-contained and signed with the cluster's token key (HMAC-SHA256), so every
//! node that holds the key verifies it without asking anyone:
//!
//! ```text
//! wraft1.<id>.<name>.<role>.<expires>.<mac>
//! ```
//!
//! `id` is 16 random hex digits (what `http.revoked_tokens` lists), `name` says whose it is
//! (`[A-Za-z0-9_-]{1,64}`), `role` is `read`, `write` or `admin` ([`crate::auth::Role`]),
//! `expires` is a Unix time in seconds, and `mac` is the hex HMAC-SHA256 of everything before
//! it under the key. The key is 32 random bytes, hex, in a file next to the certificates
//! (`http.token_key_file`, default `token.key` in `tls.dir`), written by
//! `wraft token create` when it is missing; every node needs the same file. Rotating the key
//! revokes every token.
//!
//! Verification is constant-time in the MAC (ring's `hmac::verify`) and checks the expiry
//! against this node's clock: authentication is node-local, never replicated state.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::auth::Role;

/// The first field of every token (the format's version).
pub const TOKEN_PREFIX: &str = "wraft1";
/// Length of the token key, bytes.
pub const TOKEN_KEY_BYTES: usize = 32;

/// Why a token or its key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read or written.
    #[error("token key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex digits.
    #[error("token key {path} is not {TOKEN_KEY_BYTES} bytes of hex")]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// The token is not `wraft1.<id>.<name>.<role>.<expires>.<mac>`.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The MAC does not match: another cluster's key, a rotated key, or an altered token.
    #[error("token signature does not verify (another cluster's token, a rotated key, or altered)")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("token {id} ({name}) expired at Unix time {expires}")]
    Expired {
        /// Token id.
        id: String,
        /// Token name.
        name: String,
        /// Its expiry, Unix seconds.
        expires: u64,
    },
    /// The token is listed in `http.revoked_tokens`.
    #[error("token {id} ({name}) is revoked (http.revoked_tokens)")]
    Revoked {
        /// Token id.
        id: String,
        /// Token name.
        name: String,
    },
    /// The system's random generator failed (a new key or a token id needs it).
    #[error("the system random generator failed")]
    Random,
    /// The name is not `[A-Za-z0-9_-]{1,64}`.
    #[error("token name {0:?} must be 1–64 characters of [A-Za-z0-9_-]")]
    BadName(String),
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Its id (16 hex digits).
    pub id: String,
    /// Whose it is.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub expires: u64,
}

/// A newly minted token.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The token, to give to its holder (secret).
    pub token: String,
    /// What it says.
    pub claims: TokenClaims,
}

/// The key tokens are signed with.
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl TokenKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; TOKEN_KEY_BYTES]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Read the key file at `path`; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<TokenKey>, TokenError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TokenError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let bytes: [u8; TOKEN_KEY_BYTES] = unhex(text.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| TokenError::BadKey {
                path: path.to_owned(),
            })?;
        Ok(Some(TokenKey::from_bytes(&bytes)))
    }

    /// The key at `path`, creating it (random, mode 0600, fsynced) if there is none; also
    /// says whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(TokenKey, bool), TokenError> {
        if let Some(k) = TokenKey::load(path)? {
            return Ok((k, false));
        }
        let mut bytes = [0u8; TOKEN_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random)?;
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(format!("{}\n", hex(&bytes)).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok((TokenKey::from_bytes(&bytes), true))
    }

    /// Mint a token for `name` with `role`, valid until `expires` (Unix seconds).
    pub fn mint(&self, name: &str, role: Role, expires: u64) -> Result<MintedToken, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::BadName(name.to_owned()));
        }
        let mut id = [0u8; 8];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| TokenError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("the system random generator failed"),
            })?;
        let id = hex(&id);
        let body = format!("{TOKEN_PREFIX}.{id}.{name}.{role}.{expires}");
        let mac = hex(hmac::sign(&self.key, body.as_bytes()).as_ref());
        Ok(MintedToken {
            token: format!("{body}.{mac}"),
            claims: TokenClaims {
                id,
                name: name.to_owned(),
                role,
                expires,
            },
        })
    }

    /// Verify `token` at Unix time `now`, refusing the ids in `revoked`.
    pub fn verify(
        &self,
        token: &str,
        now: u64,
        revoked: &[String],
    ) -> Result<TokenClaims, TokenError> {
        let malformed = |why: &str| TokenError::Malformed(why.to_owned());
        let (body, mac) = token
            .rsplit_once('.')
            .ok_or_else(|| malformed("no signature"))?;
        let mac = unhex(mac).ok_or_else(|| malformed("the signature is not hex"))?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let parts: Vec<&str> = body.split('.').collect();
        let [prefix, id, name, role, expires] = parts[..] else {
            return Err(malformed(
                "expected wraft1.<id>.<name>.<role>.<expires>.<mac>",
            ));
        };
        if prefix != TOKEN_PREFIX {
            return Err(malformed("unknown version"));
        }
        let role: Role = role.parse().map_err(|_| malformed("unknown role"))?;
        let expires: u64 = expires.parse().map_err(|_| malformed("bad expiry"))?;
        let claims = TokenClaims {
            id: id.to_owned(),
            name: name.to_owned(),
            role,
            expires,
        };
        if revoked.iter().any(|r| r == id) {
            return Err(TokenError::Revoked {
                id: claims.id,
                name: claims.name,
            });
        }
        if now >= expires {
            return Err(TokenError::Expired {
                id: claims.id,
                name: claims.name,
                expires,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TokenKey {
        TokenKey::from_bytes(&[b; TOKEN_KEY_BYTES])
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims_until_it_expires() {
        let k = key(1);
        let t = k.mint("dashboard", Role::Read, 1_000).unwrap();
        assert!(t.token.starts_with("wraft1."));
        assert_eq!(k.verify(&t.token, 999, &[]).unwrap(), t.claims);
        assert!(matches!(
            k.verify(&t.token, 1_000, &[]),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            k.verify(&t.token, 10, std::slice::from_ref(&t.claims.id)),
            Err(TokenError::Revoked { .. })
        ));
    }

    #[test]
    fn another_key_or_any_altered_field_fails_the_signature() {
        let t = key(1).mint("app", Role::Write, u64::MAX).unwrap();
        assert!(matches!(
            key(2).verify(&t.token, 0, &[]),
            Err(TokenError::BadSignature)
        ));
        let promoted = t.token.replace(".write.", ".admin.");
        assert!(matches!(
            key(1).verify(&promoted, 0, &[]),
            Err(TokenError::BadSignature)
        ));
        for junk in ["", "wraft1", "a.b", "wraft1.x.y.z.w.zz", "....."] {
            assert!(key(1).verify(junk, 0, &[]).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn the_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        assert!(TokenKey::load(&path).unwrap().is_none());
        let (k, created) = TokenKey::load_or_create(&path).unwrap();
        assert!(created);
        let t = k.mint("x", Role::Admin, 10).unwrap();
        let (k2, created) = TokenKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k2.verify(&t.token, 0, &[]).unwrap().role, Role::Admin);
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            TokenKey::load(&path),
            Err(TokenError::BadKey { .. })
        ));
    }

    #[test]
    fn names_that_would_break_the_format_are_refused() {
        assert!(matches!(
            key(1).mint("a.b", Role::Read, 1),
            Err(TokenError::BadName(_))
        ));
    }
}
