//! Golden fixtures of the mesh protocol: one file of bytes per kind of message, kept per
//! protocol version in `tests/wire/v{VERSION}/` (see `docs/wire-compatibility.md`).
//!
//! Each fixture is what goes on a mesh stream: a whole frame with its length prefix (the
//! first message of a connection, [`Hello`], without one), service messages inside the
//! [`ServiceFrame`] or [`ResponseBody::Service`] that carries them. The test decodes every
//! file and encodes the result again: the bytes must be identical, and equal to what this
//! build encodes for the same message. A variant added to a frame type without a fixture
//! fails to compile here ([`variants()`] matches every type exhaustively) or fails the test.
//!
//! `UPDATE_WIRE_FIXTURES=1 cargo test --all-features --lib wire::fixtures` writes the
//! files of the current version anew (and removes the ones no message makes any more). A
//! directory holding a `RELEASED` file belongs to a published version: it is never
//! rewritten, so a change to its bytes needs a new protocol version.
//!
//! The messages are in [`frames`] (the mesh's own) and [`services`] (the cluster-wide
//! services'); the variants they must show, in `variants.rs`.

mod frames;
mod services;
mod variants;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use super::{
    DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder, Id, Response, ResponseBody, ServiceFrame, VERSION,
    decode_body, decode_hello, encode, encode_body, encode_hello,
};
use variants::{ALL_VARIANTS, variants};

/// The environment variable that rewrites the fixtures of the current version.
const UPDATE: &str = "UPDATE_WIRE_FIXTURES";

/// One message of the protocol, as a file of bytes.
struct Fixture {
    /// File name, without `.bin`.
    name: String,
    /// The bytes this build sends for it.
    bytes: Vec<u8>,
    /// Decodes bytes as this kind of message and encodes the result again.
    reencode: fn(&[u8]) -> Result<Vec<u8>, String>,
    /// The variants of the protocol's types it shows (see [`variants`]).
    shows: Vec<&'static str>,
}

fn id(c: u8) -> Id {
    Id([c; 16])
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    encode(frame).expect("a sample frame encodes").to_vec()
}

/// Decodes one whole frame (length prefix included), refusing trailing bytes.
fn read_frame(bytes: &[u8]) -> Result<Frame, String> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    dec.extend(bytes);
    let frame = dec
        .next_frame()
        .map_err(|e| e.to_string())?
        .ok_or("an incomplete frame")?;
    if dec.last_size() != bytes.len() {
        return Err(format!(
            "{} bytes after the frame",
            bytes.len() - dec.last_size()
        ));
    }
    Ok(frame)
}

fn reencode_frame(bytes: &[u8]) -> Result<Vec<u8>, String> {
    Ok(frame_bytes(&read_frame(bytes)?))
}

fn reencode_hello(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let hello = decode_hello(bytes).map_err(|e| e.to_string())?;
    encode_hello(&hello).map_err(|e| e.to_string())
}

/// A service message of type `T` inside the frame that carries it: a [`ServiceFrame`] or
/// the [`ResponseBody::Service`] of a response.
fn reencode_service<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let again = |body: &Bytes| -> Result<Bytes, String> {
        let msg: T = decode_body(body).map_err(|e| e.to_string())?;
        encode_body(&msg).map_err(|e| e.to_string())
    };
    let frame = match read_frame(bytes)? {
        Frame::Service(s) => Frame::Service(ServiceFrame {
            body: again(&s.body)?,
            ..s
        }),
        Frame::Response(Response {
            id,
            body: ResponseBody::Service(body),
        }) => Frame::Response(Response {
            id,
            body: ResponseBody::Service(again(&body)?),
        }),
        other => return Err(format!("not a service message: {other:?}")),
    };
    Ok(frame_bytes(&frame))
}

fn frame(name: &str, frame: Frame) -> Fixture {
    Fixture {
        name: name.into(),
        bytes: frame_bytes(&frame),
        reencode: reencode_frame,
        shows: variants(&frame),
    }
}

/// A service message in the frame that carries it.
fn service<T: Serialize + DeserializeOwned>(
    name: &str,
    service: &str,
    confirm: Option<Id>,
    msg: &T,
    shows: &'static str,
) -> Fixture {
    let f = Frame::Service(ServiceFrame {
        service: service.into(),
        confirm,
        body: encode_body(msg).expect("a sample message encodes"),
    });
    Fixture {
        name: name.into(),
        bytes: frame_bytes(&f),
        reencode: reencode_service::<T>,
        shows: [variants(&f), vec![shows]].concat(),
    }
}

/// A service's answer in the response that carries it.
fn service_answer<T: Serialize + DeserializeOwned>(
    name: &str,
    msg: &T,
    shows: &'static str,
) -> Fixture {
    let f = Frame::Response(Response {
        id: id(b'q'),
        body: ResponseBody::Service(encode_body(msg).expect("a sample message encodes")),
    });
    Fixture {
        name: name.into(),
        bytes: frame_bytes(&f),
        reencode: reencode_service::<T>,
        shows: [variants(&f), vec![shows]].concat(),
    }
}

/// Every fixture of the current version.
fn fixtures() -> Vec<Fixture> {
    let mut out = frames::fixtures();
    out.extend(services::fixtures());
    out
}

/// The fixtures of protocol version `version`.
fn dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wire")
        .join(format!("v{version}"))
}

/// Whether a fixture file belongs to a feature this build lacks (so it has no sample here).
fn of_a_missing_feature(name: &str) -> bool {
    name.starts_with("sessions-") && !cfg!(feature = "sessions")
}

fn write_fixtures(dir: &Path, fixtures: &[Fixture]) {
    assert!(
        !dir.join("RELEASED").exists(),
        "{} belongs to a released protocol version: its bytes never change. Bump \
         wire::VERSION (and the ALPN) for an incompatible change",
        dir.display()
    );
    std::fs::create_dir_all(dir).expect("create the fixture directory");
    for f in fixtures {
        std::fs::write(dir.join(format!("{}.bin", f.name)), &f.bytes).expect("write a fixture");
    }
    for file in std::fs::read_dir(dir).expect("list the fixtures").flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".bin")
            && !of_a_missing_feature(stem)
            && !fixtures.iter().any(|f| f.name == stem)
        {
            std::fs::remove_file(file.path()).expect("remove a stale fixture");
        }
    }
}

/// Every fixture file of this version decodes and encodes again to the very same bytes,
/// which are also what this build sends for the same message; every kind of message has
/// one.
#[test]
fn every_fixture_decodes_and_encodes_again_identically() {
    let fixtures = fixtures();
    let dir = dir(VERSION);
    if std::env::var_os(UPDATE).is_some() {
        write_fixtures(&dir, &fixtures);
    }
    let hint =
        format!("(`{UPDATE}=1 cargo test --all-features --lib wire::fixtures` rewrites them)");
    for f in &fixtures {
        let path = dir.join(format!("{}.bin", f.name));
        let kept =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} {hint}", path.display()));
        assert_eq!(
            (f.reencode)(&kept).as_deref(),
            Ok(&kept[..]),
            "{}: decoded and encoded again, the bytes differ",
            path.display()
        );
        assert_eq!(
            kept,
            f.bytes,
            "{}: this build encodes the same message otherwise: a change of the mesh \
             protocol {hint}",
            path.display()
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("list the fixtures")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_owned))
        .filter(|n| !of_a_missing_feature(n))
        .collect();
    files.sort();
    let mut names: Vec<String> = fixtures.iter().map(|f| f.name.clone()).collect();
    names.sort();
    assert_eq!(
        files, names,
        "a fixture file without a message, or the reverse {hint}"
    );
    let shown: Vec<&str> = fixtures.iter().flat_map(|f| f.shows.clone()).collect();
    for variant in ALL_VARIANTS {
        assert!(shown.contains(variant), "no fixture shows {variant}");
    }
}

/// A fixture with a byte changed or cut short does not decode back to itself: the test
/// above can fail.
#[test]
fn a_damaged_fixture_is_caught() {
    for f in fixtures() {
        let mut cut = f.bytes.clone();
        cut.pop();
        assert!(
            (f.reencode)(&cut).as_deref() != Ok(&f.bytes[..]),
            "{}: cut short",
            f.name
        );
        let mut version = f.bytes.clone();
        // The version byte: after the length prefix, if any, and the magic.
        let at = if f.name.starts_with("hello") { 2 } else { 6 };
        version[at] = VERSION.wrapping_add(1);
        assert!(
            (f.reencode)(&version).is_err(),
            "{}: another version",
            f.name
        );
    }
}
