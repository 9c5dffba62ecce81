//! Ports for processes that must listen on addresses known before they start.

/// A port free now for a node to listen on. Nodes must know each other's
/// addresses before they start, so the harness picks their ports itself.
///
/// Ports come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), handed out by a counter that starts at a
/// pid-derived offset and checked by binding. A port from `bind(:0)` would be
/// in the ephemeral range: between the check and the node's own bind (or
/// while a killed node is down before its restart) any outgoing connection on
/// the machine (the cluster's own peers, the tests running beside it) may be
/// given it as its local port, and the node then fails to start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let any = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    if ephemeral_low <= LOW + 1_000 {
        return any().expect("free port");
    }
    let span = ephemeral_low - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    any().expect("free port")
}
