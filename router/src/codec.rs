//! Request framing: RESP multibulk (`*N` of `$len` bulk strings) and inline
//! commands, with limits enforced **before** a frame is buffered.
//!
//! [`FrameScanner`] walks headers incrementally as bytes arrive (so a 500 MB
//! frame arriving in 64 KB reads is scanned once, not re-parsed per read),
//! rejects an oversized array, bulk or inline line as soon as its header is
//! seen, and notes where each argument lies; a complete frame is then cut
//! off the buffer and its arguments are slices of it (no copy).
//!
//! Why not `redis-protocol`'s decoder: it re-walks a frame from its start on
//! every read until the frame is whole, and applies no limits before
//! buffering, so the limits need this scanner anyway; decoding the frame
//! again once the scanner has walked it cost more than cutting the slices
//! the scanner already found (`cargo bench -p tessera-router --bench framing`
//! measures the three ways side by side; docs/benchmarks.md has the figures).
//! `redis-protocol` stays the oracle the codec's fuzz tests check replies
//! against.

use bytes::{Buf, Bytes, BytesMut};

/// Protocol limits (all configurable on the router).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_bulk_len: usize,
    pub max_array_len: usize,
    pub max_inline_len: usize,
    /// Limits for a connection that has not authenticated: errors say so,
    /// in Redis's words.
    pub unauthenticated: bool,
}

impl Limits {
    /// What a connection may send before it authenticates (Redis's
    /// limits for unauthenticated clients): 10 arguments of 16 KiB.
    pub const UNAUTHENTICATED: Limits =
        Limits { max_bulk_len: 16 * 1024, max_array_len: 10, max_inline_len: 16 * 1024, unauthenticated: true };
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_array_len: 16 * 1024 * 1024,
            max_inline_len: 64 * 1024,
            unauthenticated: false,
        }
    }
}

/// A protocol violation: answered with `-ERR Protocol error: ...`, then the
/// connection is closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERR Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn perr(s: impl Into<String>) -> ProtocolError {
    ProtocolError(s.into())
}

/// Incremental header scanner for the frame at the front of the buffer.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Bytes of the current frame already validated.
    pos: usize,
    /// Elements still to scan in the current multibulk (`None` before its header).
    remaining: Option<usize>,
    /// Where each argument scanned so far lies in the frame (start, length).
    spans: Vec<(usize, usize)>,
}

/// A complete multibulk frame at the front of the buffer, as scanned.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// `*0` or `*-1` and the bytes its header takes: nothing to run.
    Empty(usize),
    /// A frame of `len` bytes whose arguments lie at `spans` (start, length).
    Frame { len: usize, spans: Vec<(usize, usize)> },
}

/// At most this many argument spans are reserved ahead from a frame's
/// header: the header is a claim, not the bytes (up to `max_array_len`).
const SPANS_RESERVED: usize = 64;

/// What [`FrameScanner::scan_multibulk`] found.
enum Frame {
    /// `*0` / `*-1`, whose header takes this many bytes.
    Empty(usize),
    /// A frame this many bytes long.
    Complete(usize),
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

fn parse_len(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

impl FrameScanner {
    /// Takes the next complete command off `buf`: `Ok(Some(argv))` (possibly
    /// empty for `*0` or a blank inline line), `Ok(None)` when more bytes are
    /// needed, or a protocol error.
    pub fn next(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if buf.first().is_some_and(|b| *b != b'*') {
            return self.inline(buf, limits);
        }
        Ok(match self.scan(buf, limits)? {
            None => None,
            Some(Scanned::Empty(header)) => {
                buf.advance(header);
                Some(Vec::new())
            }
            Some(Scanned::Frame { len, spans }) => {
                let frame = buf.split_to(len).freeze();
                Some(spans.into_iter().map(|(at, n)| frame.slice(at..at + n)).collect())
            }
        })
    }

    /// Scans the multibulk frame at the front of `buf` (which starts with
    /// `*`), going on from where the last call stopped: `Ok(Some(_))` once it
    /// is complete (the scanner is then ready for the next frame), `Ok(None)`
    /// while more bytes are needed. Leaves `buf` as it is.
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<Scanned>, ProtocolError> {
        let Some(len) = self.scan_multibulk(buf, limits)? else {
            return Ok(None);
        };
        let spans = std::mem::take(&mut self.spans);
        *self = FrameScanner::default();
        Ok(Some(match len {
            Frame::Empty(header) => Scanned::Empty(header),
            Frame::Complete(len) => Scanned::Frame { len, spans },
        }))
    }

    /// Returns the frame's length once complete.
    fn scan_multibulk(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
        if self.remaining.is_none() {
            // Like a bulk header: its CRLF within the first 32 bytes, so the
            // verdict does not depend on how the bytes were split into reads.
            let Some(eol) = find_crlf(&buf[..buf.len().min(32)], 0) else {
                if buf.len() > 32 {
                    return Err(perr("invalid multibulk length"));
                }
                return Ok(None);
            };
            let n = parse_len(&buf[1..eol]).ok_or_else(|| perr("invalid multibulk length"))?;
            if n <= 0 {
                return Ok(Some(Frame::Empty(eol + 2)));
            }
            if n as u64 > limits.max_array_len as u64 {
                return Err(perr(match limits.unauthenticated {
                    true => "unauthenticated multibulk length",
                    false => "invalid multibulk length",
                }));
            }
            self.remaining = Some(n as usize);
            self.spans.reserve(SPANS_RESERVED.min(n as usize));
            self.pos = eol + 2;
        }
        while let Some(left) = self.remaining.filter(|l| *l > 0) {
            let Some(&first) = buf.get(self.pos) else {
                return Ok(None);
            };
            if first != b'$' {
                return Err(perr(format!("expected '$', got '{}'", char::from(first))));
            }
            let Some(eol) = find_crlf(&buf[..buf.len().min(self.pos + 32)], self.pos) else {
                if buf.len() > self.pos + 32 {
                    return Err(perr("invalid bulk length"));
                }
                return Ok(None);
            };
            let len = parse_len(&buf[self.pos + 1..eol]).ok_or_else(|| perr("invalid bulk length"))?;
            if len < 0 || len as u64 > limits.max_bulk_len as u64 {
                return Err(perr(match limits.unauthenticated && len >= 0 {
                    true => "unauthenticated bulk length",
                    false => "invalid bulk length",
                }));
            }
            let end = eol + 2 + len as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if buf[end - 2..end] != *b"\r\n" {
                return Err(perr("expected CRLF after a bulk string"));
            }
            self.spans.push((eol + 2, len as usize));
            self.pos = end;
            self.remaining = Some(left - 1);
        }
        Ok(Some(Frame::Complete(self.pos)))
    }

    fn inline(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let scan_to = buf.len().min(limits.max_inline_len + 1);
        let Some(nl) = buf[..scan_to].iter().position(|b| *b == b'\n') else {
            if buf.len() > limits.max_inline_len {
                return Err(perr("too big inline request"));
            }
            return Ok(None);
        };
        let line = buf.split_to(nl + 1).freeze();
        let body = line.slice(..nl);
        let body = body.strip_suffix(b"\r").map(|b| line.slice_ref(b)).unwrap_or(body);
        split_inline(&body).map(Some).ok_or_else(|| perr("unbalanced quotes in request"))
    }
}

/// Splits an inline command like Redis's `sdssplitargs`: whitespace separated,
/// with "double quotes" (and `\n`, `\xHH` escapes) and 'single quotes'.
pub fn split_inline(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut cur = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let c = *line.get(i)?;
                    match c {
                        b'\\'
                            if line.get(i + 1) == Some(&b'x')
                                && line.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                                && line.get(i + 3).is_some_and(u8::is_ascii_hexdigit) =>
                        {
                            let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok()?;
                            cur.push(u8::from_str_radix(hex, 16).ok()?);
                            i += 4;
                        }
                        b'\\' => {
                            let e = *line.get(i + 1)?;
                            cur.push(match e {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                                return None;
                            }
                            break;
                        }
                        _ => {
                            cur.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let c = *line.get(i)?;
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        cur.push(b'\'');
                        i += 2;
                    } else if c == b'\'' {
                        i += 1;
                        if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return None;
                        }
                        break;
                    } else {
                        cur.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    cur.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(cur));
    }
    Some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]], limits: &Limits) -> Vec<Result<Option<Vec<Bytes>>, ProtocolError>> {
        let mut sc = FrameScanner::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                let r = sc.next(&mut buf, limits);
                let stop = !matches!(r, Ok(Some(_)));
                out.push(r);
                if stop {
                    break;
                }
            }
        }
        out
    }

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect()
    }

    #[test]
    fn multibulk_in_pieces_and_pipelined() {
        let l = Limits::default();
        let r = feed(&[b"*2\r\n$3\r\nGET", b"\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"], &l);
        assert_eq!(r[0], Ok(None));
        assert_eq!(r[1], Ok(Some(args(&["GET", "k"]))));
        assert_eq!(r[2], Ok(Some(args(&["PING"]))));
        assert_eq!(r[3], Ok(None));
    }

    #[test]
    fn inline_commands() {
        let l = Limits::default();
        let r = feed(&[b"PING\r\nSET k \"a b\\x41\" 'c d'\n"], &l);
        assert_eq!(r[0], Ok(Some(args(&["PING"]))));
        assert_eq!(r[1], Ok(Some(args(&["SET", "k", "a bA", "c d"]))));
        assert!(feed(&[b"SET \"a\n"], &l)[0].is_err());
    }

    #[test]
    fn limits_reject_before_buffering() {
        let l = Limits { max_bulk_len: 10, max_array_len: 4, max_inline_len: 8, unauthenticated: false };
        assert_eq!(feed(&[b"*5\r\n"], &l)[0], Err(perr("invalid multibulk length")));
        assert_eq!(feed(&[b"*1\r\n$11\r\n"], &l)[0], Err(perr("invalid bulk length")));
        assert_eq!(feed(&[b"PINGPINGPING"], &l)[0], Err(perr("too big inline request")));
        assert_eq!(feed(&[b"*1\r\n:1\r\n"], &l)[0], Err(perr("expected '$', got ':'")));
        assert_eq!(feed(&[b"*x\r\n"], &l)[0], Err(perr("invalid multibulk length")));
        assert_eq!(feed(&[b"*0\r\n"], &l)[0], Ok(Some(vec![])));
    }

    /// Found by `tests/codec_fuzz.rs`: a zero-padded multibulk count whose
    /// CRLF lay past the 32-byte header limit was accepted when it arrived in
    /// one read and refused when it arrived in pieces.
    #[test]
    fn long_multibulk_header_refused_however_it_arrives() {
        let l = Limits::default();
        let padded = format!("*{}1\r\n$4\r\nPING\r\n", "0".repeat(38));
        let first_verdict = |r: Vec<Result<Option<Vec<Bytes>>, ProtocolError>>| r.into_iter().find(|r| *r != Ok(None));
        let whole = feed(&[padded.as_bytes()], &l);
        let pieces = feed(&padded.as_bytes().chunks(1).collect::<Vec<_>>(), &l);
        assert_eq!(first_verdict(whole), Some(Err(perr("invalid multibulk length"))));
        assert_eq!(first_verdict(pieces), Some(Err(perr("invalid multibulk length"))));
        // A header that fits is read either way.
        let fits = format!("*{}1\r\n$4\r\nPING\r\n", "0".repeat(28));
        assert_eq!(first_verdict(feed(&[fits.as_bytes()], &l)), Some(Ok(Some(args(&["PING"])))));
    }
}
