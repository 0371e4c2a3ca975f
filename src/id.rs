//! [`SessionId`]: the identity of one visitor session (one browser, one cookie).
//!
//! Parsing is deliberately strict: an id arrives from the outside world (a cookie, a header),
//! so only the canonical hyphenated 36-character form is accepted.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The identity of one session: a UUID, usually a random v4 issued in a cookie.
///
/// `SessionId` is 16 bytes, `Copy`, and hashes fast. It parses only the hyphenated
/// 36-character form (`67e55044-10b1-426f-9247-bb680e5fe0c8`), in either case and of any UUID
/// version, and displays in lower-case hyphenated form.
///
/// ```
/// use presence_tracker::SessionId;
///
/// fn main() -> Result<(), presence_tracker::ParseSessionIdError> {
///     let id: SessionId = "67E55044-10B1-426F-9247-BB680E5FE0C8".parse()?;
///     assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
///     assert!("67e5504410b1426f9247bb680e5fe0c8".parse::<SessionId>().is_err()); // simple form: refused
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh random (version 4) id, as a server issues to a new visitor.
    pub fn new_v4() -> Self {
        SessionId(Uuid::new_v4())
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for SessionId {
    fn from(uuid: Uuid) -> Self {
        SessionId(uuid)
    }
}

impl From<SessionId> for Uuid {
    fn from(id: SessionId) -> Self {
        id.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0.hyphenated())
    }
}

/// Why a string is not a [`SessionId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseSessionIdError {
    reason: ParseReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ParseReason {
    Length(usize),
    Hyphen(usize),
    NotHex(usize),
}

impl fmt::Display for ParseSessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid session id: ")?;
        match self.reason {
            ParseReason::Length(len) => write!(
                f,
                "expected 36 characters in the hyphenated form \
                 xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, found {len} bytes"
            ),
            ParseReason::Hyphen(at) => write!(f, "expected '-' at byte {at}"),
            ParseReason::NotHex(at) => write!(f, "expected a hexadecimal digit at byte {at}"),
        }
    }
}

impl std::error::Error for ParseSessionIdError {}

const HYPHENS: [usize; 4] = [8, 13, 18, 23];

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    /// Parses the hyphenated form only; see [`SessionId`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_ascii(s.as_bytes())
    }
}

impl SessionId {
    /// [`FromStr`] on bytes: the HTTP layer parses a cookie value without checking UTF-8
    /// first (anything that is not ASCII hex is refused here anyway).
    pub(crate) fn parse_ascii(bytes: &[u8]) -> Result<Self, ParseSessionIdError> {
        let err = |reason| Err(ParseSessionIdError { reason });
        if bytes.len() != 36 {
            return err(ParseReason::Length(bytes.len()));
        }
        let mut value: u128 = 0;
        for (at, &b) in bytes.iter().enumerate() {
            if HYPHENS.contains(&at) {
                if b != b'-' {
                    return err(ParseReason::Hyphen(at));
                }
                continue;
            }
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return err(ParseReason::NotHex(at)),
            };
            value = (value << 4) | u128::from(digit);
        }
        Ok(SessionId(Uuid::from_u128(value)))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_either_case() {
        for _ in 0..50 {
            let id = SessionId::new_v4();
            let text = id.to_string();
            assert_eq!(text.len(), 36);
            assert_eq!(text, text.to_lowercase(), "displays in lower case");
            assert_eq!(text.parse::<SessionId>().unwrap(), id);
            assert_eq!(text.to_uppercase().parse::<SessionId>().unwrap(), id);
            assert_eq!(SessionId::from(*id.as_uuid()), id);
            assert_eq!(Uuid::from(id), *id.as_uuid());
            assert_eq!(id.as_uuid().hyphenated().to_string(), text);
        }
    }

    #[test]
    fn parses_a_known_id() {
        let lower = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let id: SessionId = lower.parse().unwrap();
        assert_eq!(id.to_string(), lower);
        assert_eq!(lower.to_uppercase().parse::<SessionId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), format!("SessionId({lower})"));
    }

    #[test]
    fn accepts_any_version() {
        let v1 = "c232ab00-9414-11ec-b3c8-9f6bdeced846";
        assert_eq!(v1.parse::<SessionId>().unwrap().to_string(), v1);
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(nil.parse::<SessionId>().unwrap().as_uuid(), &Uuid::nil());
    }

    #[test]
    fn refuses_everything_else() {
        let good = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        for bad in [
            "",
            "67e55044",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8 ",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044-10b1-426f-9247-bb680e5fe0c80",
            "67e55044_10b1-426f-9247-bb680e5fe0c8",
            "67e5504-410b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0cg",
            "67e55044-10b1-426f-9247-bb680e5fe0c\u{e9}",
            "+7e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            let err = bad.parse::<SessionId>().unwrap_err();
            assert!(err.to_string().starts_with("invalid session id: "), "{err}");
        }
        let oversized = good.repeat(1000);
        assert!(
            oversized
                .parse::<SessionId>()
                .unwrap_err()
                .to_string()
                .contains("36000 bytes")
        );
    }
}
