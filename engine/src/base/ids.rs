//! Identifiers and names: newtypes so that ids of different resources cannot be mixed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::error::{Error, Result};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// The id as a UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The 16 bytes used as catalog keys.
            pub fn to_bytes(self) -> [u8; 16] {
                self.0.into_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| Error::invalid("id", format!("{s:?} is not a UUID: {e}")))
            }
        }
    };
}

uuid_id!(
    /// A disk's immutable id.
    DiskId
);
uuid_id!(
    /// A group's immutable id.
    GroupId
);
uuid_id!(
    /// A pack of stored chunk records.
    PackId
);
uuid_id!(
    /// A restore point collection's immutable id.
    CollectionId
);
uuid_id!(
    /// A restore point's immutable id.
    RestorePointId
);
uuid_id!(
    /// A long-running operation's id.
    OperationId
);
uuid_id!(
    /// One disk's history: a restored disk starts a new lineage whose base is a disk restore point.
    LineageId
);

/// A resource name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, unique within its parent.
///
/// Names never hold `/`, so `COLLECTION/RESTORE_POINT/DISK` is unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Longest name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates `s` as a name.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(Error::invalid("name", "must not be empty"));
        };
        if bytes.len() > Self::MAX_LEN {
            return Err(Error::invalid("name", format!("{} bytes is longer than {}", bytes.len(), Self::MAX_LEN)));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(Error::invalid("name", format!("{s:?} must start with a letter or digit")));
        }
        if let Some(bad) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(Error::invalid(
                "name",
                format!("{s:?} holds {bad:?}; allowed are letters, digits, '.', '_' and '-'"),
            ));
        }
        Ok(Self(s))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for good in ["a", "A0", "vm-1.disk_0", &"x".repeat(64)] {
            assert!(Name::new(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "_a", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_round_trip_through_strings_and_bytes() {
        let id = DiskId::new();
        assert_eq!(id.to_string().parse::<DiskId>().unwrap(), id);
        assert_eq!(DiskId::from(Uuid::from_bytes(id.to_bytes())), id);
        assert!("nope".parse::<DiskId>().is_err());
    }
}
