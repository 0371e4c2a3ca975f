//! The secret that signs presence cookies. Our own type, so that the public API does not
//! carry the `cookie` crate's version and the secret never shows in `Debug` output.

use std::fmt;

/// The secret that signs presence cookies (HMAC-SHA256), so that the layer accepts only
/// ids it issued; see [`PresenceLayer::signing_key`](super::PresenceLayer::signing_key).
///
/// [`Key::generate`] makes a random one for this process. Servers that must accept each
/// other's cookies (several nodes behind a load balancer, or one server across restarts)
/// share a key made from the same secret with [`Key::try_from`], which takes at least 64
/// bytes of a cryptographically random secret.
///
/// ```
/// use presence_tracker::Presence;
/// use presence_tracker::http::{Key, PresenceLayer};
///
/// // One process: a random key.
/// let single = PresenceLayer::new(Presence::new()).signing_key(Key::generate());
///
/// // Several nodes, or restarts: the same secret everywhere.
/// let secret = [7u8; 64]; // in production: 64 random bytes from the secret store
/// let key = Key::try_from(&secret[..]).expect("a 64-byte secret");
/// let shared = PresenceLayer::new(Presence::new()).signing_key(key);
///
/// assert!(Key::try_from(&secret[..32]).is_err());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone)]
pub struct Key(cookie::Key);

impl Key {
    /// The length a secret given to [`Key::try_from`] must at least have, in bytes.
    pub const MIN_SECRET_LEN: usize = 64;

    /// A random key from the operating system's secure generator.
    pub fn generate() -> Key {
        Key(cookie::Key::generate())
    }

    pub(crate) fn into_inner(self) -> cookie::Key {
        self.0
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = KeyTooShort;

    /// A key from a secret of at least [`Key::MIN_SECRET_LEN`] bytes (only the first 64
    /// are used).
    fn try_from(secret: &[u8]) -> Result<Key, KeyTooShort> {
        match cookie::Key::try_from(secret) {
            Ok(key) if secret.len() >= Key::MIN_SECRET_LEN => Ok(Key(key)),
            _ => Err(KeyTooShort { len: secret.len() }),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// [`Key::try_from`] was given fewer than [`Key::MIN_SECRET_LEN`] bytes.
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTooShort {
    len: usize,
}

impl fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a presence signing key needs a secret of at least {} bytes, got {}",
            Key::MIN_SECRET_LEN,
            self.len
        )
    }
}

impl std::error::Error for KeyTooShort {}
