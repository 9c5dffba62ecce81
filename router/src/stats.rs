//! Router counters. Each event is counted once here, both in the atomics that
//! `INFO` reads and in the `metrics` facade that `/metrics` exports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tessera_common::error::CODES;

#[derive(Default)]
pub struct Stats {
    pub connections_total: AtomicU64,
    pub connected: AtomicU64,
    pub rejected: AtomicU64,
    /// TLS connections in their handshake (they count against
    /// `--max-clients` too).
    pub handshaking: AtomicU64,
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Error replies by code, in the order of [`CODES`].
    by_code: [AtomicU64; CODES.len()],
}

impl Stats {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tessera_router_connections_total").increment(1);
        metrics::gauge!("tessera_router_connections").increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("tessera_router_connections").decrement(1.0);
    }

    pub fn connection_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tessera_router_rejected_connections_total").increment(1);
    }

    /// A TLS handshake that failed or timed out.
    pub fn handshake_failed(&self) {
        metrics::counter!("tessera_router_tls_handshake_failures_total").increment(1);
    }

    /// One command finished with `code` (`ok` or an error code) after `took`.
    pub fn command(&self, cmd: &'static str, code: &'static str, took: Duration) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if code != "ok" {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let Some(i) = CODES.iter().position(|c| *c == code) {
                self.by_code[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        tessera_telemetry::record_command("tessera_router", cmd, code, took);
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("tessera_router_net_input_bytes_total").increment(n as u64);
    }

    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("tessera_router_net_output_bytes_total").increment(n as u64);
    }

    /// Each error code answered so far with its count, by name (`INFO
    /// errorstats`).
    pub fn error_counts(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            CODES.iter().zip(&self.by_code).map(|(c, n)| (*c, Stats::get(n))).filter(|(_, n)| *n > 0).collect();
        out.sort();
        out
    }

    /// `CONFIG RESETSTAT`.
    pub fn reset(&self) {
        for c in
            [&self.commands, &self.errors, &self.connections_total, &self.rejected, &self.bytes_in, &self.bytes_out]
                .into_iter()
                .chain(&self.by_code)
        {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
