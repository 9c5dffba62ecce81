//! Protocol-neutral replies and their RESP2/RESP3 encodings.
//!
//! Nodes answer with a [`Reply`]; the router encodes it for the protocol its
//! client negotiated (`HELLO 2|3`). This file is the one place replies become
//! bytes. Encoding is written directly into the output buffer (no intermediate
//! frame tree) because it runs once per reply on the hot path.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::put_varint as varint;

/// RESP protocol version negotiated on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// A reply, before encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-text`; the text includes the code (`ERR ...`, `WRONGTYPE ...`).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// `$-1` / `_`
    Null,
    /// `*-1` / `_`
    NullArray,
    Array(Vec<Reply>),
    /// RESP3 map; a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 set; an array in RESP2.
    Set(Vec<Reply>),
    /// RESP3 double; a bulk string formatted like Redis's `%.17g` in RESP2.
    Double(f64),
    /// RESP3 boolean; `:1`/`:0` in RESP2.
    Bool(bool),
    /// RESP3 verbatim string (`txt:`); a bulk string in RESP2.
    Verbatim(String),
    /// A bulk string held in parts (a model's bytes, see [`crate::blob`]),
    /// sent without joining them.
    Blob(Blob),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn bulk_str(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    pub fn err(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Compact binary form used between node and router (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        if !self.holds_blob() {
            return crate::encode(self, self.size_hint());
        }
        let mut w = Parts { done: Vec::new(), cur: Vec::with_capacity(self.size_hint()), apart: usize::MAX };
        self.encode_parts(&mut w);
        w.cur
    }

    /// [`Reply::to_bytes`] as parts to send one after another: bulk
    /// payloads of `apart` bytes or more are parts of their own, shared
    /// with the reply (not copied), and the rest is encoded between them.
    pub fn to_parts(&self, apart: usize) -> Vec<Bytes> {
        let mut w = Parts { done: Vec::new(), cur: Vec::new(), apart };
        self.encode_parts(&mut w);
        w.flush();
        w.done
    }

    fn holds_blob(&self) -> bool {
        match self {
            Reply::Blob(_) => true,
            Reply::Array(items) => items.iter().any(Reply::holds_blob),
            _ => false,
        }
    }

    /// Postcard's encoding of `self`, with bulk payloads handed to `w`
    /// whole (serde would hand a blob's parts over a byte at a time).
    fn encode_parts(&self, w: &mut Parts) {
        // Variant numbers as derived (the order of `Reply`'s variants); a
        // test checks them against serde's encoding.
        const BULK: u64 = 3;
        const ARRAY: u64 = 6;
        const BLOB: u64 = 12;
        match self {
            Reply::Bulk(b) => {
                varint(&mut w.cur, BULK);
                varint(&mut w.cur, b.len() as u64);
                w.raw(b);
            }
            Reply::Blob(b) => {
                varint(&mut w.cur, BLOB);
                varint(&mut w.cur, b.len() as u64);
                b.parts().iter().for_each(|p| w.raw(p));
            }
            Reply::Array(items) => {
                varint(&mut w.cur, ARRAY);
                varint(&mut w.cur, items.len() as u64);
                items.iter().for_each(|r| r.encode_parts(w));
            }
            other => crate::encode_into(other, &mut w.cur),
        }
    }

    /// Roughly the encoded size (bulk payloads and a little for the rest),
    /// so encoding a large reply allocates once.
    pub fn size_hint(&self) -> usize {
        match self {
            Reply::Bulk(b) => b.len() + 8,
            Reply::Blob(b) => b.len() + 16,
            Reply::Array(v) | Reply::Set(v) => 8 + v.iter().map(Reply::size_hint).sum::<usize>(),
            Reply::Map(v) => 8 + v.iter().map(|(k, v)| k.size_hint() + v.size_hint()).sum::<usize>(),
            _ => 64,
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<Reply, postcard::Error> {
        postcard::from_bytes(b)
    }

    /// Appends the encoding of `self` in `proto` to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                // Never let an error text break the framing.
                let clean: Vec<u8> = s.bytes().map(|c| if c == b'\r' || c == b'\n' { b' ' } else { c }).collect();
                line(out, b'-', &clean)
            }
            Reply::Int(i) => int_line(out, b':', *i),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Blob(b) => {
                out.reserve(b.len() + 16);
                int_line(out, b'$', b.len() as i64);
                b.parts().iter().for_each(|p| out.put_slice(p));
                out.put_slice(b"\r\n");
            }
            Reply::Null => match proto {
                Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::NullArray => match proto {
                Protocol::Resp2 => out.put_slice(b"*-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::Array(items) => {
                int_line(out, b'*', items.len() as i64);
                items.iter().for_each(|r| r.encode(proto, out));
            }
            Reply::Set(items) => {
                let tag = if proto == Protocol::Resp3 { b'~' } else { b'*' };
                int_line(out, tag, items.len() as i64);
                items.iter().for_each(|r| r.encode(proto, out));
            }
            Reply::Map(pairs) => {
                match proto {
                    Protocol::Resp2 => int_line(out, b'*', 2 * pairs.len() as i64),
                    Protocol::Resp3 => int_line(out, b'%', pairs.len() as i64),
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Double(d) => match proto {
                Protocol::Resp2 => bulk(out, format_double(*d).as_bytes()),
                Protocol::Resp3 => line(out, b',', format_double(*d).as_bytes()),
            },
            Reply::Bool(b) => match proto {
                Protocol::Resp2 => int_line(out, b':', i64::from(*b)),
                Protocol::Resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            },
            Reply::Verbatim(s) => match proto {
                Protocol::Resp2 => bulk(out, s.as_bytes()),
                Protocol::Resp3 => {
                    int_line(out, b'=', s.len() as i64 + 4);
                    out.put_slice(b"txt:");
                    out.put_slice(s.as_bytes());
                    out.put_slice(b"\r\n");
                }
            },
        }
    }
}

/// An encoding in parts (see [`Reply::to_parts`]).
struct Parts {
    done: Vec<Bytes>,
    cur: Vec<u8>,
    apart: usize,
}

impl Parts {
    fn raw(&mut self, b: &Bytes) {
        if b.len() >= self.apart {
            self.flush();
            self.done.push(b.clone());
        } else {
            self.cur.extend_from_slice(b);
        }
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.done.push(std::mem::take(&mut self.cur).into());
        }
    }
}

fn line(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(tag);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

fn int_line(out: &mut BytesMut, tag: u8, n: i64) {
    let mut buf = itoa_buf(n);
    out.put_u8(tag);
    out.put_slice(buf.as_bytes_mut());
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(b.len() + 16);
    int_line(out, b'$', b.len() as i64);
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

struct IntBuf {
    buf: [u8; 20],
    start: usize,
}

impl IntBuf {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(n: i64) -> IntBuf {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    IntBuf { buf, start: i }
}

/// Formats a double as C's `%.17g`, which is what RedisAI (on Redis 6.2) sends
/// for FLOAT/DOUBLE tensor values: float32 0.1 → `0.10000000149011612`, 1.0 → `1`.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    const P: i32 = 17;
    let sci = format!("{:.*e}", (P - 1) as usize, d);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if (-4..P).contains(&exp) {
        let fixed = format!("{:.*}", (P - 1 - exp) as usize, d);
        strip_zeros(&fixed).to_string()
    } else {
        let m = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, p: Protocol) -> String {
        let mut b = BytesMut::new();
        r.encode(p, &mut b);
        String::from_utf8_lossy(&b).into_owned()
    }

    #[test]
    fn double_formatting_matches_printf_17g() {
        assert_eq!(format_double(f64::from(0.1f32)), "0.10000000149011612");
        assert_eq!(format_double(1.0), "1");
        assert_eq!(format_double(2.5), "2.5");
        assert_eq!(format_double(-3.0), "-3");
        assert_eq!(format_double(1e20), "1e+20");
        assert_eq!(format_double(1.5e-7), "1.4999999999999999e-07");
        assert_eq!(format_double(123456.0), "123456");
        assert_eq!(format_double(0.0001), "0.0001");
    }

    #[test]
    fn resp2_and_resp3_encodings() {
        let m = Reply::Map(vec![(Reply::bulk_str("proto"), Reply::Int(3))]);
        assert_eq!(enc(&m, Protocol::Resp2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&m, Protocol::Resp3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&Reply::Null, Protocol::Resp2), "$-1\r\n");
        assert_eq!(enc(&Reply::Null, Protocol::Resp3), "_\r\n");
        assert_eq!(enc(&Reply::Double(1.0), Protocol::Resp2), "$1\r\n1\r\n");
        assert_eq!(enc(&Reply::Double(1.0), Protocol::Resp3), ",1\r\n");
        assert_eq!(enc(&Reply::Verbatim("a".into()), Protocol::Resp3), "=5\r\ntxt:a\r\n");
        assert_eq!(enc(&Reply::Int(-42), Protocol::Resp2), ":-42\r\n");
        assert_eq!(enc(&Reply::err("ERR a\r\nb"), Protocol::Resp2), "-ERR a  b\r\n");
        let parts = Blob::from_parts([Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        // The compact form of blobs is serde's, only faster.
        let big = Blob::from_parts([Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 200])]);
        for r in [
            Reply::Bulk(Bytes::from(vec![3u8; 200])),
            Reply::Array(vec![Reply::Bulk(Bytes::from(vec![3u8; 200])), Reply::Int(7), Reply::bulk_str("x")]),
            Reply::Blob(parts.clone()),
            Reply::Blob(big.clone()),
            Reply::Array(vec![Reply::Blob(big.clone()), Reply::Bulk(Bytes::new()), Reply::Blob(parts.clone())]),
            Reply::Array(vec![Reply::Int(1)]),
        ] {
            let compact = r.to_bytes();
            assert_eq!(compact, postcard::to_stdvec(&r).unwrap(), "{r:?}");
            for apart in [1, 100, usize::MAX] {
                let parts = r.to_parts(apart);
                assert_eq!(parts.concat(), compact, "{r:?} in parts of {apart}");
            }
            let back = Reply::from_bytes(&compact).unwrap();
            assert_eq!(back, r);
        }
        for proto in [Protocol::Resp2, Protocol::Resp3] {
            assert_eq!(enc(&Reply::Blob(parts.clone()), proto), "$3\r\nabc\r\n");
        }
    }

    #[test]
    fn replies_roundtrip_through_bytes() {
        let r = Reply::Array(vec![Reply::ok(), Reply::Bulk(Bytes::from_static(b"\0x")), Reply::Null]);
        assert_eq!(Reply::from_bytes(&r.to_bytes()).unwrap(), r);
    }
}
