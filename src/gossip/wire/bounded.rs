//! Lists with a bound on their length, checked on both sides of the wire: encoding refuses
//! a list longer than its bound (so that a node never sends what its peers refuse), and
//! decoding refuses one from its length prefix, before anything is allocated. Same bytes on
//! the wire as a plain `Vec`.
//!
//! Every bound of the decoder is declared here, with `bound!` or as a module of the same
//! shape, and used with `#[serde(with = "...")]`, so that the encoder checks it too; a bound
//! given to the decoder alone (a `deserialize_with`) fails a test of this module.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{Error as _, SeqAccess, Visitor},
    ser::Error as _,
};

#[cfg(doc)]
use super::NodeMeta;

#[cfg(test)]
mod tests;

/// Most room names in one list of a frame (target rooms, excepted rooms, rooms to join or
/// leave, rooms answered). An empty name takes one byte on the wire but 24 in memory: this
/// bound, checked before the list is allocated, keeps a frame from growing many times its
/// size once decoded.
pub const MAX_ROOMS: usize = 65_536;
/// Most binary attachments of one payload (one byte on the wire, 32 in memory each).
pub const MAX_ATTACHMENTS: usize = 4_096;
/// Most sockets in one answer to a `fetch_sockets` request.
pub const MAX_SOCKETS: usize = 1_048_576;
/// Most namespaces a node announces it hosts ([`NodeMeta::namespaces`]).
pub const MAX_NAMESPACES: usize = 4_096;
/// Longest namespace name a node announces, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 256;
/// Longest ack timeout a request carries, in milliseconds (10 minutes): a longer one is cut
/// to it, on the sending node and again on decoding, so that no peer can make the node keep
/// the ack state of its sockets for good. An emit with a longer timeout waits that long on
/// its own node; sockets of other nodes time out after this.
pub const MAX_ACK_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// A bound a value went beyond while it was being encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exceeded {
    /// What the list holds, as a plural noun (`"binary attachments"`).
    pub what: &'static str,
    /// How many it holds.
    pub len: usize,
    /// How many a node accepts.
    pub max: usize,
}

thread_local! {
    /// The bound the value being encoded on this thread went beyond: the encoder's error
    /// carries no message, so [`super::encode`] reads it here.
    static EXCEEDED: Cell<Option<Exceeded>> = const { Cell::new(None) };
    /// Set while a test encodes, on purpose, what a node must refuse.
    #[cfg(test)]
    static UNCHECKED: Cell<bool> = const { Cell::new(false) };
}

/// The bound the last encoding on this thread went beyond, if any (and forget it).
pub(super) fn take_exceeded() -> Option<Exceeded> {
    EXCEEDED.with(Cell::take)
}

/// Encode with `f` without checking bounds: what a misbehaving peer would send.
#[cfg(test)]
pub(crate) fn unchecked<R>(f: impl FnOnce() -> R) -> R {
    UNCHECKED.with(|u| u.set(true));
    let out = f();
    UNCHECKED.with(|u| u.set(false));
    out
}

/// Refuse, while encoding, a list of `len` elements with a bound of `max`.
pub(crate) fn check<S: Serializer>(
    what: &'static str,
    len: usize,
    max: usize,
) -> Result<(), S::Error> {
    #[cfg(test)]
    if UNCHECKED.with(Cell::get) {
        return Ok(());
    }
    if len <= max {
        return Ok(());
    }
    EXCEEDED.with(|e| e.set(Some(Exceeded { what, len, max })));
    Err(S::Error::custom(format!("{len} {what}, more than {max}")))
}

/// A list of at most `MAX` elements.
pub(crate) struct Bounded<T, const MAX: usize>(pub(crate) Vec<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for V<T, MAX> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {MAX} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let announced = seq.size_hint().unwrap_or(0);
                if announced > MAX {
                    return Err(A::Error::invalid_length(announced, &self));
                }
                let mut out = Vec::with_capacity(announced.min(1024));
                while let Some(x) = seq.next_element()? {
                    if out.len() == MAX {
                        return Err(A::Error::invalid_length(MAX + 1, &self));
                    }
                    out.push(x);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V::<T, MAX>(PhantomData)).map(Bounded)
    }
}

/// A module `$name` for `#[serde(with = "...")]` on a `Vec<$t>` field: at most `$max`
/// elements, `$what` naming them in errors.
macro_rules! bound {
    ($(#[$doc:meta])* $name:ident, $t:ty, $max:expr, $what:literal) => {
        $(#[$doc])*
        pub(crate) mod $name {
            #[allow(unused_imports)]
            use super::*;

            pub(crate) fn serialize<S: serde::Serializer>(
                v: &[$t],
                s: S,
            ) -> Result<S::Ok, S::Error> {
                $crate::gossip::wire::bounded::check::<S>($what, v.len(), $max)?;
                serde::Serialize::serialize(v, s)
            }

            pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Vec<$t>, D::Error> {
                <$crate::gossip::wire::bounded::Bounded<$t, { $max }> as serde::Deserialize>::deserialize(d)
                    .map(|b| b.0)
            }
        }
    };
}
pub(crate) use bound;

bound!(
    /// Room names (target, excepted, joined, left, answered).
    rooms,
    String,
    crate::gossip::wire::MAX_ROOMS,
    "room names"
);
bound!(
    /// Sockets answered to `fetch_sockets`.
    sockets,
    (crate::gossip::wire::Id, crate::gossip::wire::Id),
    crate::gossip::wire::MAX_SOCKETS,
    "sockets"
);

/// The binary attachments of a payload, if any.
pub(crate) mod attachments {
    use bytes::Bytes;

    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<Vec<Bytes>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let len = v.as_ref().map_or(0, Vec::len);
        check::<S>("binary attachments", len, super::super::MAX_ATTACHMENTS)?;
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<Bytes>>, D::Error> {
        Option::<Bounded<Bytes, { super::super::MAX_ATTACHMENTS }>>::deserialize(d)
            .map(|o| o.map(|b| b.0))
    }
}

/// A string of at most `MAX` bytes, refused before it is copied.
pub(crate) struct Name<const MAX: usize>(String);

impl<'de, const MAX: usize> Deserialize<'de> for Name<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MAX: usize>;
        impl<const MAX: usize> Visitor<'_> for V<MAX> {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of at most {MAX} bytes")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
                if s.len() > MAX {
                    return Err(E::invalid_length(s.len(), &self));
                }
                Ok(s.to_string())
            }
        }
        d.deserialize_str(V::<MAX>).map(Name)
    }
}

/// The namespaces a node announces: at most [`super::MAX_NAMESPACES`] names of at most
/// [`super::MAX_NAMESPACE_LEN`] bytes.
pub(crate) mod namespaces {
    use super::*;
    use crate::gossip::wire::{MAX_NAMESPACE_LEN, MAX_NAMESPACES};

    pub(crate) fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        check::<S>("namespaces", v.len(), MAX_NAMESPACES)?;
        let longest = v.iter().map(String::len).max().unwrap_or(0);
        check::<S>("bytes in a namespace name", longest, MAX_NAMESPACE_LEN)?;
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Bounded::<Name<MAX_NAMESPACE_LEN>, MAX_NAMESPACES>::deserialize(d)
            .map(|b| b.0.into_iter().map(|n| n.0).collect())
    }
}

/// An ack timeout, cut to [`super::MAX_ACK_TIMEOUT_MS`] on both sides of the wire.
pub(crate) mod ack_timeout {
    use super::*;
    use crate::gossip::wire::MAX_ACK_TIMEOUT_MS;

    pub(crate) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|ms| ms.min(MAX_ACK_TIMEOUT_MS)).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<u64>::deserialize(d).map(|t| t.map(|ms| ms.min(MAX_ACK_TIMEOUT_MS)))
    }
}
