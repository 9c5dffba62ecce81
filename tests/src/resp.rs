//! A raw RESP connection for tests that check replies byte for byte: each
//! reply comes back as its exact wire text (RESP2 or RESP3).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::bail;

/// A raw RESP connection that returns each reply as its exact wire text.
pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Resp> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Resp { stream: BufReader::new(s) })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.get_mut().write_all(bytes)?;
        Ok(())
    }

    /// Encodes `args` as a RESP array and sends it.
    pub fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.send_raw(&out)
    }

    pub fn cmd(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a)?;
        self.read()
    }

    /// Reads one complete reply (any RESP2/RESP3 type) as lossy UTF-8 text.
    pub fn read(&mut self) -> anyhow::Result<String> {
        let mut out = Vec::new();
        self.read_into(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn line(&mut self, out: &mut Vec<u8>) -> anyhow::Result<String> {
        let mut l = Vec::new();
        let n = self.stream.read_until(b'\n', &mut l)?;
        if n == 0 {
            bail!("connection closed");
        }
        out.extend_from_slice(&l);
        Ok(String::from_utf8_lossy(&l).trim_end().to_string())
    }

    fn read_into(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let l = self.line(out)?;
        let (t, rest) = l.split_at(1);
        let n: i64 = rest.parse().unwrap_or(0);
        match t {
            "$" | "=" | "!" if n >= 0 => {
                let mut b = vec![0u8; n as usize + 2];
                self.stream.read_exact(&mut b)?;
                out.extend_from_slice(&b);
            }
            "*" | "~" | ">" => (0..n.max(0)).try_for_each(|_| self.read_into(out))?,
            "%" | "|" => (0..2 * n.max(0)).try_for_each(|_| self.read_into(out))?,
            _ => {}
        }
        Ok(())
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}
