//! Lists with a bound on their length, checked on both sides of the wire: encoding refuses
//! a list longer than its bound (so that a node never sends what its peers refuse), and
//! decoding refuses one from its length prefix, before anything is allocated. Same bytes on
//! the wire as a plain `Vec`. The machinery only: each layer declares its bounds with
//! `bound!` (the mesh's in `gossip::wire::bounded`, the features' beside their messages).

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer, Serializer,
    de::{Error as _, SeqAccess, Visitor},
    ser::Error as _,
};

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
pub(crate) fn take_exceeded() -> Option<Exceeded> {
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
                $crate::codec::bounded::check::<S>($what, v.len(), $max)?;
                serde::Serialize::serialize(v, s)
            }

            pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Vec<$t>, D::Error> {
                <$crate::codec::bounded::Bounded<$t, { $max }> as serde::Deserialize>::deserialize(d)
                    .map(|b| b.0)
            }
        }
    };
}
pub(crate) use bound;

/// A string of at most `MAX` bytes, refused before it is copied.
#[cfg_attr(not(feature = "cluster-gossip"), allow(dead_code))]
pub(crate) struct Name<const MAX: usize>(pub(crate) String);

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
