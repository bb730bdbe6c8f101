//! A tiny MessagePack reader and writer for the test clients of a msgpack-parser cluster.
//!
//! Only what socket.io packets use: maps with string keys, arrays, strings, integers, floats,
//! booleans, nil and bin. A bin is shown as the JSON object `{"$bin": [bytes...]}`.

use serde_json::{Map, Value, json};

/// Decode one MessagePack value that spans the whole of `buf`.
pub fn decode(buf: &[u8]) -> Value {
    let mut pos = 0;
    let v = read(buf, &mut pos);
    assert_eq!(pos, buf.len(), "trailing bytes after the msgpack value");
    v
}

/// The JSON shape of a bin: `{"$bin": [bytes...]}`.
pub fn bin(bytes: &[u8]) -> Value {
    json!({ "$bin": bytes })
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> &'a [u8] {
    let s = buf
        .get(*pos..*pos + n)
        .unwrap_or_else(|| panic!("msgpack value truncated at {pos}"));
    *pos += n;
    s
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn read(buf: &[u8], pos: &mut usize) -> Value {
    let m = take(buf, pos, 1)[0];
    match m {
        0x00..=0x7f => json!(m),
        0x80..=0x8f => read_map(buf, pos, usize::from(m & 0x0f)),
        0x90..=0x9f => read_array(buf, pos, usize::from(m & 0x0f)),
        0xa0..=0xbf => read_str(buf, pos, usize::from(m & 0x1f)),
        0xc0 => Value::Null,
        0xc2 => json!(false),
        0xc3 => json!(true),
        0xc4..=0xc6 => {
            let n = be(take(buf, pos, 1 << (m - 0xc4))) as usize;
            bin(take(buf, pos, n))
        }
        0xca => json!(f32::from_bits(be(take(buf, pos, 4)) as u32)),
        0xcb => json!(f64::from_bits(be(take(buf, pos, 8)))),
        0xcc..=0xcf => json!(be(take(buf, pos, 1 << (m - 0xcc)))),
        0xd0 => json!(take(buf, pos, 1)[0] as i8),
        0xd1 => json!(be(take(buf, pos, 2)) as u16 as i16),
        0xd2 => json!(be(take(buf, pos, 4)) as u32 as i32),
        0xd3 => json!(be(take(buf, pos, 8)) as i64),
        0xd9..=0xdb => {
            let n = be(take(buf, pos, 1 << (m - 0xd9))) as usize;
            read_str(buf, pos, n)
        }
        0xdc | 0xdd => {
            let n = be(take(buf, pos, 2 << (m - 0xdc))) as usize;
            read_array(buf, pos, n)
        }
        0xde | 0xdf => {
            let n = be(take(buf, pos, 2 << (m - 0xde))) as usize;
            read_map(buf, pos, n)
        }
        0xe0..=0xff => json!(m as i8),
        other => panic!("msgpack marker {other:#x} not supported by the test reader"),
    }
}

fn read_str(buf: &[u8], pos: &mut usize, n: usize) -> Value {
    Value::String(String::from_utf8(take(buf, pos, n).to_vec()).expect("utf-8 string"))
}

fn read_array(buf: &[u8], pos: &mut usize, n: usize) -> Value {
    Value::Array((0..n).map(|_| read(buf, pos)).collect())
}

fn read_map(buf: &[u8], pos: &mut usize, n: usize) -> Value {
    let mut map = Map::new();
    for _ in 0..n {
        let Value::String(k) = read(buf, pos) else {
            panic!("non-string msgpack map key")
        };
        map.insert(k, read(buf, pos));
    }
    Value::Object(map)
}

/// Encode a JSON value as MessagePack (`{"$bin": [..]}` becomes a bin).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

fn write_len(out: &mut Vec<u8>, n: usize, fix: u8, fix_max: usize, m16: u8, m32: u8) {
    if n <= fix_max {
        out.push(fix | n as u8);
    } else if n <= 0xffff {
        out.push(m16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                if u < 0x80 {
                    out.push(u as u8);
                } else {
                    out.push(0xcf);
                    out.extend_from_slice(&u.to_be_bytes());
                }
            } else if let Some(i) = n.as_i64() {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.as_f64().unwrap().to_bits().to_be_bytes());
            }
        }
        Value::String(s) => {
            if s.len() < 32 {
                out.push(0xa0 | s.len() as u8);
            } else {
                out.push(0xdb);
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            }
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(a) => {
            write_len(out, a.len(), 0x90, 15, 0xdc, 0xdd);
            for v in a {
                write(v, out);
            }
        }
        Value::Object(m) => {
            if let (1, Some(Value::Array(bytes))) = (m.len(), m.get("$bin")) {
                out.push(0xc6);
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend(bytes.iter().map(|b| b.as_u64().unwrap() as u8));
                return;
            }
            write_len(out, m.len(), 0x80, 15, 0xde, 0xdf);
            for (k, v) in m {
                write(&Value::String(k.clone()), out);
                write(v, out);
            }
        }
    }
}
