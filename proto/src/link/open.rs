//! Opening links: telling a link from HTTP/2 on a node's port
//! ([`sniff`]), connecting with the magic handshake ([`connect`], inside TLS
//! on a cluster with TLS) and accepting a link inside a TLS session
//! ([`accept_tls`]).

use std::time::Duration;

use tokio::net::TcpStream;

use super::{tune, Conn, Magic};

/// Waits (bounded) for enough of a new connection's first bytes to tell
/// which of `magics` starts it, without consuming them: its index, or
/// `None` for anything else (an HTTP/2 client).
pub async fn sniff(stream: &TcpStream, magics: &[&Magic]) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut b = [0u8; 8];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut b)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        let mut prefix = false;
        for (i, m) in magics.iter().enumerate() {
            if b[..n] == m[..n] {
                if n == m.len() {
                    return Some(i);
                }
                prefix = true;
            }
        }
        if !prefix {
            return None;
        }
        // A prefix of a magic: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How long a new connection waits for the peer's magic.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `addr`, sends `magic` and waits for the same magic back:
/// inside a TLS session on a cluster with TLS ([`crate::tls`]).
pub async fn connect(addr: &str, magic: &Magic) -> Result<Conn, String> {
    // Long enough for a SYN lost once (resent after 1 s).
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    tune(&stream, magic);
    match crate::tls::get() {
        None => Ok(handshake(stream, addr, magic).await?.into()),
        Some(tls) => {
            let stream = tls.connect_link(stream).await.map_err(|e| format!("TLS with {addr}: {e}"))?;
            let (stream, session) = handshake(stream, addr, magic).await?.into_inner();
            Ok(Conn::tls(stream, rustls::Connection::Client(session)))
        }
    }
}

/// [`exchange`] with `addr`, within [`HANDSHAKE_TIMEOUT`].
async fn handshake<S>(stream: S, addr: &str, magic: &Magic) -> Result<S, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange(stream, magic))
        .await
        .map_err(|_| format!("{addr} did not answer the link handshake"))?
        .map_err(|e| format!("link handshake with {addr}: {e}"))
}

/// Sends `magic` and waits for the same magic back.
pub(super) async fn exchange<S>(mut stream: S, magic: &Magic) -> std::io::Result<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(magic).await?;
    stream.flush().await?;
    let mut got = [0u8; 8];
    let mut n = 0;
    while n < got.len() {
        match stream.read(&mut got[n..]).await? {
            // Closed before answering (a process shutting down, say).
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            k => n += k,
        }
        if got[..n] != magic[..n] {
            return Err(std::io::Error::other("the peer does not serve this link"));
        }
    }
    Ok(stream)
}

/// Accepts a link inside a TLS session a node accepted (ALPN
/// [`crate::tls::ALPN_LINK`]): reads its magic, which must be one of
/// `magics`. The magic's index and the link (its magic not yet answered).
pub async fn accept_tls(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    magics: &[&Magic],
) -> Result<(usize, Conn), String> {
    use tokio::io::AsyncReadExt;
    let mut stream = stream;
    let mut got = [0u8; 8];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut got))
        .await
        .map_err(|_| "no link magic in time".to_string())?
        .map_err(|e| e.to_string())?;
    let Some(i) = magics.iter().position(|m| **m == got) else {
        return Err("not a link this node serves".into());
    };
    let (stream, session) = stream.into_inner();
    tune(&stream, magics[i]);
    Ok((i, Conn::tls(stream, rustls::Connection::Server(session))))
}
