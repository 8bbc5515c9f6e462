//! Identifiers parsed at the edge: a device id or a user id is 1–64 characters of `[A-Za-z0-9._-]`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_LEN} characters")]
    TooLong,
    #[error("may only contain letters, digits, '.', '_' and '-'")]
    BadCharacter,
    /// A SPIFFE ID's path segments may not be `.` or `..`, and a path-normalising upstream would
    /// read one as another resource.
    #[error("must not be '.' or '..'")]
    DotSegment,
}

const MAX_LEN: usize = 64;

/// The identifiers' syntax as a regular expression (ECMA-262, as JSON Schema reads it).
pub const PATTERN: &str = r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,64}$";

fn validate(s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(InvalidId::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(InvalidId::BadCharacter);
    }
    if s == "." || s == ".." {
        return Err(InvalidId::DotSegment);
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                validate(s).map(|()| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                validate(&s).map(|()| Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_LEN))
                    .pattern(Some(PATTERN))
                    .description(Some(concat!(
                        stringify!($name),
                        ": 1 to 64 letters, digits, '.', '_' or '-'; not '.' or '..'"
                    )))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A device's identity, carried in its certificate's CN and SPIFFE URI SAN.
    DeviceId
);
identifier!(
    /// A user who owns devices.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses_as_documented() {
        let cases: &[(&str, Result<(), InvalidId>, &str)] = &[
            ("pi-01", Ok(()), "letters, digit and dash"),
            ("a", Ok(()), "one character"),
            ("Dev_1.lab-2", Ok(()), "all allowed punctuation"),
            (&"x".repeat(64), Ok(()), "64 characters is the maximum"),
            ("", Err(InvalidId::Empty), "empty"),
            (&"x".repeat(65), Err(InvalidId::TooLong), "65 characters"),
            (
                "a/b",
                Err(InvalidId::BadCharacter),
                "slash would break the SPIFFE path",
            ),
            ("a b", Err(InvalidId::BadCharacter), "space"),
            ("é", Err(InvalidId::BadCharacter), "non-ASCII"),
            ("a\n", Err(InvalidId::BadCharacter), "newline"),
            (
                ".",
                Err(InvalidId::DotSegment),
                "SPIFFE forbids the dot segment",
            ),
            (
                "..",
                Err(InvalidId::DotSegment),
                "SPIFFE forbids the dot-dot segment",
            ),
            ("...", Ok(()), "three dots are a name"),
            (".a", Ok(()), "a leading dot is a name"),
        ];
        for (input, expected, why) in cases {
            assert_eq!(
                DeviceId::parse(input).map(|_| ()),
                *expected,
                "{why}: {input:?}"
            );
        }
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"not ok\"").is_err());
    }
}
