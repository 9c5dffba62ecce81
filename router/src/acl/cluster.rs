//! The cluster's users, kept by the meta group: reading them into the
//! router ([`follow_cluster`]), seeding a cluster that has none with the
//! router's own, and the ACL subcommands that change them (`SETUSER`,
//! `DELUSER`, `LOAD`) or write them out (`SAVE`).
//!
//! A change is made in the meta group's log and answered once it applied
//! there; the router that made it reads the users back before it answers,
//! so its next command sees the change. Every other router reads them
//! within a refresh (the nodes report the users' version with the shard
//! map, every second), and its connections follow before their next
//! command (see [`super::follow`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_common::acl::{self, RuleError, User};
use tessera_common::command::{AclCmd, NodeCommand, UsersCmd};
use tessera_common::reply::Reply;
use tracing::{info, warn};

use super::Users;
use crate::shards::ShardMap;
use crate::Router;

const NO_ACL_FILE: &str = "ERR This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.";

/// Seeds the cluster with this router's users if it has none, then puts
/// the cluster's in force here.
pub async fn sync(shards: &ShardMap, users: &Users) -> Result<(), String> {
    if users.current().version == 0 {
        seed(shards, users).await?;
    }
    // (The seed has applied when its answer comes, so the first read finds
    // users; a few more, briefly, in case it has not.)
    for _ in 0..20 {
        read(shards, users).await?;
        if users.ready() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the cluster has no users yet".into())
}

/// Keeps this router's users the cluster's, for the router's life: reads
/// them again when a meta replica reports a newer version, and until the
/// meta group has answered once, keeps asking.
pub async fn follow_cluster(router: Arc<Router>) {
    let mut seen = router.shards.users_seen();
    let mut failing = false;
    loop {
        let reported = *seen.borrow_and_update();
        let have = router.users.current().version;
        if have == 0 || reported > have {
            match sync(&router.shards, &router.users).await {
                Ok(()) => failing = false,
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, "could not read the cluster's users; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // (Also wakes now and then, in case a report was missed.)
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(5), seen.changed()).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The ACL subcommands that change the cluster's users, or save them.
pub async fn change(router: Arc<Router>, cmd: AclCmd) -> Reply {
    let result = match cmd {
        AclCmd::SetUser(name, rules) => set_user(&router, &name, &rules).await,
        AclCmd::DelUser(names) => del_user(&router, &names).await,
        AclCmd::Load => load(&router).await,
        AclCmd::Save => save(&router).await,
        _ => Err(Reply::err("ERR internal: not an ACL change")),
    };
    result.unwrap_or_else(|e| e)
}

async fn set_user(router: &Router, name: &Bytes, rules: &[Bytes]) -> Result<Reply, Reply> {
    let name = acl::check_name(name).map_err(Reply::err)?.to_owned();
    // Passwords leave the router as their SHA-256 only.
    let mut sent = Vec::with_capacity(rules.len());
    for r in rules {
        let text = || String::from_utf8_lossy(r).into_owned();
        sent.push(match r.first() {
            Some(b'>') => format!("#{}", acl::hash_password(&r[1..])),
            Some(b'<') => format!("!{}", acl::hash_password(&r[1..])),
            _ => std::str::from_utf8(r)
                .map_err(|_| Reply::err(RuleError { rule: text(), reason: "Syntax error" }.message()))?
                .to_owned(),
        });
    }
    // Checked here first, for Redis's words on the rules as given (the meta
    // group checks again, on the user as it is when the change applies).
    let mut user = router.users.get(name.as_bytes()).map_or_else(|| User::new(&name), |u| (*u).clone());
    for (r, s) in rules.iter().zip(&sent) {
        user.apply(s).map_err(|e| {
            Reply::err(RuleError { rule: String::from_utf8_lossy(r).into_owned(), reason: e.reason }.message())
        })?;
    }
    change_cluster(router, UsersCmd::SetUser { name, rules: sent }).await?;
    Ok(Reply::ok())
}

async fn del_user(router: &Router, names: &[Bytes]) -> Result<Reply, Reply> {
    if names.iter().any(|n| n.as_ref() == b"default") {
        return Err(Reply::err("ERR The 'default' user cannot be removed"));
    }
    // (A name that is not UTF-8 names no user.)
    let names: Vec<String> = names.iter().filter_map(|n| std::str::from_utf8(n).ok().map(str::to_owned)).collect();
    match change_cluster(router, UsersCmd::DelUser(names)).await? {
        Reply::Array(a) if a.len() == 2 => Ok(a[1].clone()),
        other => Err(unexpected(&other)),
    }
}

/// ACL LOAD: this router's ACL file, read again, replaces the cluster's
/// users (with `--requirepass` for the default user if the file has none).
async fn load(router: &Router) -> Result<Reply, Reply> {
    let Some(path) = &router.config.acl_path else {
        return Err(Reply::err(NO_ACL_FILE));
    };
    let text = tokio::fs::read_to_string(path).await.map_err(|e| Reply::err(format!("ERR {}: {e}", path.display())))?;
    let users = super::own_users(Some(&text), router.config.requirepass.as_deref())
        .map_err(|e| Reply::err(format!("ERR {}: {e}", path.display())))?;
    let lines = users.values().map(|u| u.describe()).collect();
    change_cluster(router, UsersCmd::Load(lines)).await?;
    Ok(Reply::ok())
}

/// ACL SAVE: the cluster's users (as this router has them) into this
/// router's ACL file, replaced whole.
async fn save(router: &Router) -> Result<Reply, Reply> {
    let Some(path) = router.config.acl_path.clone() else {
        return Err(Reply::err(NO_ACL_FILE));
    };
    let mut text = String::new();
    for u in router.users.current().by_name.values() {
        text.push_str(&u.describe());
        text.push('\n');
    }
    let write = tokio::task::spawn_blocking(move || write_atomic(&path, text.as_bytes()));
    match write.await {
        Ok(Ok(())) => Ok(Reply::ok()),
        Ok(Err(e)) => {
            warn!(error = %e, "ACL SAVE failed");
            Err(Reply::err(
                "ERR There was an error trying to save the ACLs. Please check the server logs for more information",
            ))
        }
        Err(e) => Err(Reply::err(format!("ERR internal: {e}"))),
    }
}

/// Writes `path` through a temporary file and a rename, synced, so that a
/// crash leaves the old file or the new one; with the old file's mode (a
/// new one: readable by its owner only).
fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let tmp = path.with_extension("tmp-tessera");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Makes a change in the meta group (seeding it first if the cluster has no
/// users yet, so the change applies to this router's users rather than to
/// none), then reads the users back. The change's reply, or its error.
async fn change_cluster(router: &Router, op: UsersCmd) -> Result<Reply, Reply> {
    if router.users.current().version == 0 {
        seed(&router.shards, &router.users).await.map_err(Reply::err)?;
    }
    let reply = router.shards.call_meta(NodeCommand::Users(op).to_bytes().into(), false).await;
    if let Reply::Error(_) = reply {
        return Err(reply);
    }
    if let Err(e) = read(&router.shards, &router.users).await {
        // Made, but not read back: the follower will.
        warn!(error = %e, "an ACL change was made; reading the users back failed");
    }
    Ok(reply)
}

async fn seed(shards: &ShardMap, users: &Users) -> Result<u64, String> {
    let cmd = NodeCommand::Users(UsersCmd::Seed(users.own().to_vec()));
    match shards.call_meta(cmd.to_bytes().into(), false).await {
        Reply::Int(v) => Ok(v as u64),
        Reply::Error(e) => Err(e.to_string()),
        // (A test build that acknowledges writes before they apply
        // answers OK: the read that follows tells.)
        _ => Ok(0),
    }
}

/// Reads the cluster's users (linearizably) and puts them in force.
async fn read(shards: &ShardMap, users: &Users) -> Result<(), String> {
    let reply = shards.call_meta(NodeCommand::Users(UsersCmd::List).to_bytes().into(), true).await;
    let (version, lines) = match &reply {
        Reply::Array(a) => match a.as_slice() {
            [Reply::Int(v), Reply::Array(lines)] => (*v as u64, lines),
            _ => return Err(format!("{reply:?}")),
        },
        Reply::Error(e) => return Err(e.to_string()),
        _ => return Err(format!("{reply:?}")),
    };
    let lines: Vec<String> = lines
        .iter()
        .filter_map(|l| match l {
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    if users.install(version, &lines)? {
        info!(version, users = lines.len(), "the cluster's users are in force");
    }
    Ok(())
}

fn unexpected(r: &Reply) -> Reply {
    Reply::err(format!("ERR internal: unexpected answer from the meta group: {r:?}"))
}
