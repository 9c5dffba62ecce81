//! Which node a data dir belongs to: recorded once a node has state, so an
//! empty data dir later means a lost disk, and another node's dir is refused.

use crate::config::Config;

/// Whether `data_dir` holds a node's state; an error if another node's.
pub fn has_identity(config: &Config) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&config.data_dir)?;
    match std::fs::read_to_string(config.data_dir.join("node-id")) {
        Ok(s) if s.trim() == config.node_id.to_string() => Ok(true),
        Ok(s) => anyhow::bail!(
            "{} belongs to node {}, not {}: refusing to start",
            config.data_dir.display(),
            s.trim(),
            config.node_id
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records that `data_dir` belongs to this node (from now on, an empty data
/// dir means a lost disk).
pub fn write_identity(config: &Config) -> std::io::Result<()> {
    let tmp = config.data_dir.join("node-id.tmp");
    std::fs::write(&tmp, config.node_id.to_string())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, config.data_dir.join("node-id"))?;
    std::fs::File::open(&config.data_dir)?.sync_all()
}
