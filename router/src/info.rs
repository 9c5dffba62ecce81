//! `INFO`: Redis 7's sections and field names, with values true for this
//! router (the process clients talk to) or, where noted, for the cluster
//! behind it; and RedisAI's `ai_*` sections (its `INFO MODULES`).
//!
//! Sections are chosen as Redis chooses them: no argument or `default`
//! prints the default set, `all` adds `commandstats`-like sections but no
//! module sections, `everything` is all of them, and `modules` prints the
//! module list and every `ai_*` section (as RedisAI's own tests read them,
//! in order and each present even when empty). Fields with no meaning here
//! (forks, AOF rewrites in progress, jemalloc internals, replication
//! backlogs) are left out rather than filled with invented values; the AOF
//! fields a Redis with AOF off prints are printed, since that is the truth.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;
use tessera_common::slot::SlotScope;
use tessera_proto::v1::request::Target;

use crate::backend::NodeReply;
use crate::dispatch::dbsize;
use crate::local::{REDISAI_VERSION, REDIS_VERSION};
use crate::stats::Stats;
use crate::Router;

/// The sections a request asks for.
pub struct Wanted {
    names: Vec<String>,
    all: bool,
    everything: bool,
}

const DEFAULT: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "module_list",
    "errorstats",
    "cluster",
    "keyspace",
];

const AI_SECTIONS: [&str; 5] = ["ai_versions", "ai_git", "ai_load_time_configs", "ai_backends_info", "ai_cpu"];

impl Wanted {
    pub fn new(args: &[String]) -> Wanted {
        let mut w = Wanted { names: Vec::new(), all: false, everything: false };
        let default = |w: &mut Wanted| w.names.extend(DEFAULT.iter().map(|s| s.to_string()));
        if args.is_empty() {
            default(&mut w);
        }
        for a in args {
            match a.as_str() {
                "default" => default(&mut w),
                "all" => w.all = true,
                "everything" => (w.all, w.everything) = (true, true),
                other => w.names.push(other.to_owned()),
            }
        }
        w
    }

    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// A Redis section.
    fn redis(&self, name: &str) -> bool {
        self.all || self.has(name) || (name == "module_list" && self.has("modules"))
    }

    /// One of RedisAI's sections (module `ai`).
    fn ai(&self, name: &str) -> bool {
        self.everything || self.has("modules") || self.has("ai") || self.has(name)
    }

    fn any_ai(&self) -> bool {
        AI_SECTIONS.iter().any(|s| self.ai(s))
    }
}

/// Builds the text: `# Title` then `field:value` lines, a blank line
/// between sections.
#[derive(Default)]
struct Text(String);

impl Text {
    fn section(&mut self, title: &str, lines: impl IntoIterator<Item = String>) {
        if !self.0.is_empty() {
            self.0.push_str("\r\n");
        }
        self.0.push_str("# ");
        self.0.push_str(title);
        self.0.push_str("\r\n");
        for l in lines {
            self.0.push_str(&l);
            self.0.push_str("\r\n");
        }
    }
}

/// Redis's `bytesToHuman`.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", UNITS[i])
}

/// Seconds as Redis prints CPU times (`%ld.%06ld`).
fn secs(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn proc_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// What the storage nodes report for the `ai_*` sections.
#[derive(Default)]
struct NodesAi {
    settings: Vec<(String, i64)>,
    backends: Vec<(String, String)>,
    cpu_sys_us: u64,
    cpu_user_us: u64,
    answered: usize,
}

/// Asks every reachable node for its AI settings, backends and CPU time
/// (one second each at most: INFO stays quick; a node that does not answer
/// is left out of the sums).
async fn nodes_ai(router: &Router) -> NodesAi {
    let cmd = Bytes::from(NodeCommand::AiInfo.to_bytes());
    let calls = router.shards.nodes().into_iter().filter(|n| n.is_connected()).map(|node| {
        let cmd = cmd.clone();
        async move { tokio::time::timeout(Duration::from_secs(1), node.call(Target::Shard(0), cmd)).await }
    });
    let mut out = NodesAi::default();
    for reply in futures::future::join_all(calls).await {
        let Ok(Ok(NodeReply::Reply(Reply::Map(fields)))) = reply else {
            continue;
        };
        out.answered += 1;
        let first = out.answered == 1;
        for (k, v) in fields {
            let (Reply::Bulk(k), v) = (k, v) else { continue };
            let k = String::from_utf8_lossy(&k).into_owned();
            match (k.as_str(), v) {
                ("used_cpu_sys_us", Reply::Int(us)) => out.cpu_sys_us += us as u64,
                ("used_cpu_user_us", Reply::Int(us)) => out.cpu_user_us += us as u64,
                (b, Reply::Bulk(version)) if b.starts_with("backend:") => {
                    let name = b["backend:".len()..].to_owned();
                    if !out.backends.iter().any(|(n, _)| *n == name) {
                        out.backends.push((name, String::from_utf8_lossy(&version).into_owned()));
                    }
                }
                // (Settings from the first node that answers, as AI.CONFIG GET.)
                (_, Reply::Int(v)) if first => out.settings.push((k, v)),
                _ => {}
            }
        }
    }
    out
}

/// RedisAI's name for a backend's version field, and the value without
/// spaces (RedisAI's test helper splits the section on whitespace).
fn backend_line(kind: &str, version: &str) -> String {
    let field = match kind {
        "TF" => "TensorFlow",
        "TFLITE" => "TensorFlowLite",
        "TORCH" => "Torch",
        "ONNX" => "onnxruntime",
        other => other,
    };
    format!("ai_{field}_version:{}", version.replace(char::is_whitespace, "-"))
}

pub async fn info(router: Arc<Router>, args: Vec<String>, scope: SlotScope, tcp_port: u16) -> Reply {
    let w = Wanted::new(&args);
    let mut t = Text::default();
    let r = &*router;
    let s = &r.stats;
    let p = tessera_telemetry::process_info();
    if w.redis("server") {
        let os = ["/proc/sys/kernel/ostype", "/proc/sys/kernel/osrelease"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|v| v.trim().to_owned())
            .chain([std::env::consts::ARCH.to_owned()])
            .collect::<Vec<_>>()
            .join(" ");
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let up = r.started.elapsed().as_secs();
        let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
        t.section(
            "Server",
            [
                format!("redis_version:{REDIS_VERSION}"),
                "redis_git_sha1:00000000".into(),
                "redis_git_dirty:0".into(),
                "redis_mode:cluster".into(),
                format!("os:{os}"),
                format!("arch_bits:{}", usize::BITS),
                "monotonic_clock:POSIX clock_gettime".into(),
                "multiplexing_api:epoll".into(),
                format!("process_id:{}", std::process::id()),
                "process_supervised:no".into(),
                format!("run_id:{}", r.run_id),
                format!("tcp_port:{tcp_port}"),
                format!("server_time_usec:{now_us}"),
                format!("uptime_in_seconds:{up}"),
                format!("uptime_in_days:{}", up / 86400),
                format!("executable:{exe}"),
                "config_file:".into(),
                format!("tessera_version:{}", env!("CARGO_PKG_VERSION")),
            ],
        );
    }
    if w.redis("clients") {
        t.section(
            "Clients",
            [
                format!("connected_clients:{}", Stats::get(&s.connected)),
                "cluster_connections:0".into(),
                format!("maxclients:{}", r.config.max_clients),
                "tracking_clients:0".into(),
                "clients_in_timeout_table:0".into(),
                "total_blocking_keys:0".into(),
                "total_blocking_keys_on_nokey:0".into(),
            ],
        );
    }
    if w.redis("memory") {
        let rss = proc_field("/proc/self/status", "VmRSS:").map_or(p.rss as u64, |kb| kb * 1024);
        let total = proc_field("/proc/meminfo", "MemTotal:").unwrap_or(0) * 1024;
        let (used, peak) = (p.commit as u64, (p.peak_commit as u64).max(p.commit as u64));
        let perc = if peak > 0 { used as f64 * 100.0 / peak as f64 } else { 0.0 };
        let frag = if used > 0 { rss as f64 / used as f64 } else { 0.0 };
        t.section(
            "Memory",
            [
                format!("used_memory:{used}"),
                format!("used_memory_human:{}", human(used)),
                format!("used_memory_rss:{rss}"),
                format!("used_memory_rss_human:{}", human(rss)),
                format!("used_memory_peak:{peak}"),
                format!("used_memory_peak_human:{}", human(peak)),
                format!("used_memory_peak_perc:{perc:.2}%"),
                format!("total_system_memory:{total}"),
                format!("total_system_memory_human:{}", human(total)),
                "maxmemory:0".into(),
                "maxmemory_human:0B".into(),
                "maxmemory_policy:noeviction".into(),
                format!("mem_fragmentation_ratio:{frag:.2}"),
                format!("mem_fragmentation_bytes:{}", rss as i64 - used as i64),
                format!("mem_allocator:{}", tessera_telemetry::allocator()),
            ],
        );
    }
    if w.redis("persistence") {
        let mut lines = vec!["loading:0".to_string(), "async_loading:0".into()];
        lines.extend(r.saves.info_lines());
        lines.extend(
            [
                "aof_enabled:0",
                "aof_rewrite_in_progress:0",
                "aof_rewrite_scheduled:0",
                "aof_last_rewrite_time_sec:-1",
                "aof_current_rewrite_time_sec:-1",
                "aof_last_bgrewrite_status:ok",
                "aof_rewrites:0",
                "aof_rewrites_consecutive_failures:0",
                "aof_last_write_status:ok",
            ]
            .map(String::from),
        );
        t.section("Persistence", lines);
    }
    if w.redis("stats") {
        t.section(
            "Stats",
            [
                format!("total_connections_received:{}", Stats::get(&s.connections_total)),
                format!("total_commands_processed:{}", Stats::get(&s.commands)),
                format!("total_net_input_bytes:{}", Stats::get(&s.bytes_in)),
                format!("total_net_output_bytes:{}", Stats::get(&s.bytes_out)),
                format!("rejected_connections:{}", Stats::get(&s.rejected)),
                "pubsub_channels:0".into(),
                "pubsub_patterns:0".into(),
                "pubsubshard_channels:0".into(),
                format!("total_error_replies:{}", Stats::get(&s.errors)),
            ],
        );
    }
    if w.redis("replication") {
        t.section("Replication", r.replication_lines());
    }
    if w.redis("cpu") {
        t.section(
            "CPU",
            [
                format!("used_cpu_sys:{}", secs(p.system_ms as u64 * 1000)),
                format!("used_cpu_user:{}", secs(p.user_ms as u64 * 1000)),
                "used_cpu_sys_children:0.000000".into(),
                "used_cpu_user_children:0.000000".into(),
            ],
        );
    }
    if w.redis("module_list") {
        t.section(
            "Modules",
            [format!(
                "module:name=ai,ver={REDISAI_VERSION},api=1,filters=0,usedby=[],using=[],options=[handle-io-errors]"
            )],
        );
    }
    if w.redis("errorstats") {
        t.section("Errorstats", s.error_counts().into_iter().map(|(code, n)| format!("errorstat_{code}:count={n}")));
    }
    if w.redis("cluster") {
        let nodes = r.shards.nodes();
        let connected = nodes.iter().filter(|n| n.is_connected()).count();
        t.section(
            "Cluster",
            [
                "cluster_enabled:1".into(),
                format!("tessera_nodes:{}", nodes.len()),
                format!("tessera_nodes_connected:{connected}"),
                format!("tessera_shards:{}", r.shards.shards().len()),
                format!("tessera_advertised_nodes:{}", r.topology.nodes.len()),
            ],
        );
    }
    if w.redis("keyspace") {
        // (INFO never fails: a shard that cannot count leaves the line out.)
        let line = match dbsize(&r.shards, &scope).await {
            Ok(n) if n > 0 => Some(format!("db0:keys={n},expires=0,avg_ttl=0")),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = ?e, "INFO keyspace: a shard did not answer");
                None
            }
        };
        t.section("Keyspace", line);
    }
    if w.any_ai() {
        let nodes = nodes_ai(r).await;
        let v = REDISAI_VERSION;
        let sections: [(&str, Vec<String>); 5] = [
            (
                "ai_versions",
                vec![
                    format!("ai_RedisAI_version:{}.{}.{}", v / 10000, v / 100 % 100, v % 100),
                    "ai_low_level_API_version:1".into(),
                    "ai_rdb_version:4".into(),
                ],
            ),
            ("ai_git", vec![format!("ai_git_sha:{}", option_env!("TESSERA_GIT_SHA").unwrap_or("unknown"))]),
            ("ai_load_time_configs", {
                let mut lines: Vec<String> = nodes.settings.iter().map(|(k, v)| format!("ai_{k}:{v}")).collect();
                if nodes.answered > 0 {
                    // (No memory limit on backends: RedisAI's 0.)
                    lines.push("ai_backend_memory_limit:0".into());
                }
                lines
            }),
            ("ai_backends_info", nodes.backends.iter().map(|(k, v)| backend_line(k, v)).collect()),
            (
                "ai_cpu",
                if nodes.answered > 0 {
                    vec![
                        format!("ai_self_used_cpu_sys:{}", secs(nodes.cpu_sys_us)),
                        format!("ai_self_used_cpu_user:{}", secs(nodes.cpu_user_us)),
                        "ai_children_used_cpu_sys:0.000000".into(),
                        "ai_children_used_cpu_user:0.000000".into(),
                        "ai_main_thread_used_cpu_sys:N/A".into(),
                        "ai_main_thread_used_cpu_user:N/A".into(),
                    ]
                } else {
                    Vec::new()
                },
            ),
        ];
        for (name, lines) in sections {
            if w.ai(name) {
                t.section(name, lines);
            }
        }
    }
    Reply::Verbatim(t.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(args: &[&str]) -> Wanted {
        Wanted::new(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn sections_are_chosen_as_redis_chooses_them() {
        let d = w(&[]);
        assert!(d.redis("server") && d.redis("keyspace") && d.redis("module_list"));
        assert!(!d.redis("commandstats") && !d.any_ai());
        let all = w(&["all"]);
        assert!(all.redis("commandstats") && !all.any_ai());
        assert!(w(&["everything"]).ai("ai_cpu"));
        let m = w(&["modules"]);
        assert!(m.redis("module_list") && m.ai("ai_versions") && !m.redis("server"));
        let ai = w(&["ai"]);
        assert!(!ai.redis("module_list") && ai.ai("ai_git"));
        let one = w(&["ai_cpu"]);
        assert!(one.ai("ai_cpu") && !one.ai("ai_git"));
        assert!(w(&["default", "memory"]).redis("cpu"));
    }

    #[test]
    fn humans_and_seconds_as_redis_prints_them() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(1_017_600), "993.75K");
        assert_eq!(human(3 << 30), "3.00G");
        assert_eq!(secs(9_867_000), "9.867000");
        assert_eq!(backend_line("TF", "tract 0.23.9"), "ai_TensorFlow_version:tract-0.23.9");
    }

    #[test]
    fn sections_are_separated_by_one_blank_line() {
        let mut t = Text::default();
        t.section("A", ["a:1".to_string()]);
        t.section("B", Vec::new());
        assert_eq!(t.0, "# A\r\na:1\r\n\r\n# B\r\n");
    }
}
