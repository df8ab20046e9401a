//! Typed identifiers: a PBX, an extension, an account, an association, a tenant. Each wraps the
//! string the configuration, the API or the PBX gave, so that one cannot be passed where another
//! is expected (a map keyed by `(PbxId, Extension)` takes no `(tenant, account)`), while JSON and
//! the store see the plain string (`#[serde(transparent)]`). The PBX's call id is
//! [`crate::csta::CallId`].

use std::borrow::Borrow;
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> $name {
                $name(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name(s.to_owned())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> $name {
                $name(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id!(
    /// A PBX, by its configured id (`[[pbx]] id`).
    PbxId
);
string_id!(
    /// An extension (directory number) on one PBX.
    Extension
);
string_id!(
    /// An account of a tenant, as the tenant's service names it.
    AccountId
);
string_id!(
    /// An association, as the gateway issued it.
    AssociationId
);
string_id!(
    /// A tenant, by its configured id (`[[tenant]] id`).
    TenantId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_string_in_json_and_compare_with_it() {
        let p = PbxId::from("paris");
        assert_eq!(serde_json::to_string(&p).ok().as_deref(), Some("\"paris\""));
        assert_eq!(serde_json::from_str::<PbxId>("\"paris\"").ok(), Some(p.clone()));
        assert!(p == "paris" && "paris" == p && p.to_string() == "paris");
        let m: std::collections::HashMap<PbxId, u8> = [(p, 1)].into();
        assert_eq!(m.get("paris"), Some(&1));
    }
}
