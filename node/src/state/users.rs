//! The cluster's ACL users, kept by the meta group beside the cluster map,
//! so that every router enforces the same users and they outlive any
//! router or node.
//!
//! Each user is kept as its `ACL LIST` line (Redis's ACL file format:
//! passwords as SHA-256 only), which every release reads the same way. The
//! meta group's leader works a router's request ([`UsersCmd`]) out into the
//! lines it leads to ([`Users::plan`], with the rules code the routers check
//! with, `tessera_common::acl`) and logs those ([`UsersOp`]): replicas copy
//! lines, so replicas of different releases (a rolling upgrade) agree. Each
//! op names the version it was worked out from and applies only at that
//! version (the leader plans again if another change came between).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::acl::{self, User};
use tessera_common::command::UsersCmd;
use tessera_common::reply::Reply;

/// A change to the users, as the meta group logs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsersOp {
    /// The users of a cluster that has none yet (else nothing changes).
    Seed(BTreeMap<String, String>),
    /// One user's new line, at `version`.
    Put { name: String, line: String, version: u64 },
    /// Users removed, at `version`.
    Delete { names: Vec<String>, version: u64 },
    /// Every user replaced, at `version`.
    Replace { lines: BTreeMap<String, String>, version: u64 },
}

/// What an op that came after another change answers: the leader plans it
/// again.
pub const MOVED: &str = "TRYAGAIN the users changed while this change was planned";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    /// 0 while the cluster has none (each router then enforces its own
    /// `--acl-file` / `--requirepass`); bumped by every change.
    pub version: u64,
    /// `ACL LIST` line by user name (`default` always among them once
    /// `version` > 0).
    pub lines: BTreeMap<String, String>,
}

impl Users {
    /// The op a router's request leads to from these users, or the error
    /// to answer (then nothing is logged). `List` plans nothing.
    pub fn plan(&self, cmd: &UsersCmd) -> Result<UsersOp, Reply> {
        let version = self.version;
        Ok(match cmd {
            UsersCmd::List => return Err(Reply::err("ERR internal: a read planned as a change")),
            UsersCmd::Seed(lines) => UsersOp::Seed(parse(lines).map_err(|e| Reply::err(format!("ERR {e}")))?),
            UsersCmd::Load(lines) => {
                UsersOp::Replace { lines: parse(lines).map_err(|e| Reply::err(format!("ERR {e}")))?, version }
            }
            UsersCmd::SetUser { name, rules } => {
                acl::check_name(name.as_bytes()).map_err(Reply::err)?;
                let mut user = self.user(name)?;
                user.apply_all(rules).map_err(|e| Reply::err(e.message()))?;
                UsersOp::Put { name: name.clone(), line: kept_line(&user)?, version }
            }
            UsersCmd::DelUser(names) => {
                if names.iter().any(|n| n == "default") {
                    return Err(Reply::err("ERR The 'default' user cannot be removed"));
                }
                UsersOp::Delete { names: names.clone(), version }
            }
        })
    }

    /// Applies `op`: the reply is the new version (a delete's:
    /// `[version, deleted]`), or [`MOVED`] and nothing changed.
    /// Deterministic: lines are copied, never worked out here.
    pub fn apply(&mut self, op: &UsersOp) -> Reply {
        let at = match op {
            UsersOp::Seed(_) => None,
            UsersOp::Put { version, .. } | UsersOp::Delete { version, .. } | UsersOp::Replace { version, .. } => {
                Some(*version)
            }
        };
        if at.is_some_and(|v| v != self.version) {
            return Reply::err(MOVED);
        }
        match op {
            UsersOp::Seed(_) if self.version > 0 => return Reply::Int(self.version as i64),
            UsersOp::Seed(lines) | UsersOp::Replace { lines, .. } => self.lines = lines.clone(),
            UsersOp::Put { name, line, .. } => {
                self.ensure_default();
                self.lines.insert(name.clone(), line.clone());
            }
            UsersOp::Delete { names, .. } => {
                self.ensure_default();
                let deleted = names.iter().filter(|n| self.lines.remove(n.as_str()).is_some()).count();
                if deleted > 0 {
                    self.version += 1;
                }
                return Reply::Array(vec![Reply::Int(self.version as i64), Reply::Int(deleted as i64)]);
            }
        }
        self.version += 1;
        Reply::Int(self.version as i64)
    }

    /// `[version, [line, ...]]`, lines in name order.
    pub fn list(&self) -> Reply {
        let lines = self.lines.values().map(|l| Reply::bulk_str(l)).collect();
        Reply::Array(vec![Reply::Int(self.version as i64), Reply::Array(lines)])
    }

    /// The user `name` as kept, or a new one (`ACL SETUSER` creates).
    fn user(&self, name: &str) -> Result<User, Reply> {
        let Some(line) = self.lines.get(name) else {
            return Ok(match name {
                "default" => User::default_user(),
                _ => User::new(name),
            });
        };
        match acl::parse_file(line) {
            Ok(mut users) if users.len() == 1 => Ok(users.remove(0)),
            _ => Err(Reply::err(format!("ERR the kept line of user '{name}' does not parse: {line}"))),
        }
    }

    /// Users set before any seed start from Redis's default user.
    fn ensure_default(&mut self) {
        self.lines.entry("default".into()).or_insert_with(|| User::default_user().describe());
    }
}

/// The line `user` is kept as, refused unless it reads back as that user
/// (every router parses it: a line that does not would leave them all on
/// an older version).
fn kept_line(user: &User) -> Result<String, Reply> {
    let line = user.describe();
    match acl::parse_file(&line) {
        Ok(back) if back.len() == 1 && back[0].describe() == line => Ok(line),
        _ => Err(Reply::err(format!("ERR user '{}' cannot be kept as an ACL file line: {line}", user.name))),
    }
}

/// ACL file lines as kept: each user's description, by name, with Redis's
/// default user when the lines do not define one.
fn parse(lines: &[String]) -> Result<BTreeMap<String, String>, String> {
    let users = acl::parse_file(&lines.join("\n"))?;
    let mut out = BTreeMap::new();
    for u in users {
        out.insert(u.name.clone(), kept_line(&u).map_err(|e| format!("{e:?}"))?);
    }
    out.entry("default".into()).or_insert_with(|| User::default_user().describe());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(r: Reply) -> i64 {
        match r {
            Reply::Int(n) => n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    /// What the leader does: plan, then apply.
    fn change(u: &mut Users, cmd: UsersCmd) -> Reply {
        match u.plan(&cmd) {
            Ok(op) => u.apply(&op),
            Err(e) => e,
        }
    }

    #[test]
    fn seed_once_then_changes_bump_the_version() {
        let mut u = Users::default();
        let seed =
            vec!["user default on #148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940 ~* &* +@all"
                .to_string()];
        assert_eq!(int(change(&mut u, UsersCmd::Seed(seed.clone()))), 1);
        assert_eq!(int(change(&mut u, UsersCmd::Seed(vec![]))), 1, "a later seed changes nothing");
        assert!(u.lines["default"].contains("#148de9"));
        let set = UsersCmd::SetUser { name: "t1".into(), rules: vec!["on".into(), "~{t1}*".into(), "+@read".into()] };
        assert_eq!(int(change(&mut u, set)), 2);
        assert_eq!(u.lines["t1"], "user t1 on ~{t1}* resetchannels -@all +@read");
        // Worked out from the kept user: a second SETUSER adds to the first.
        assert_eq!(int(change(&mut u, UsersCmd::SetUser { name: "t1".into(), rules: vec!["+@ai".into()] })), 3);
        assert_eq!(u.lines["t1"], "user t1 on ~{t1}* resetchannels -@all +@read +@ai");
    }

    #[test]
    fn an_op_planned_before_another_change_changes_nothing() {
        let mut u = Users::default();
        change(&mut u, UsersCmd::Seed(vec![]));
        let a = u.plan(&UsersCmd::SetUser { name: "a".into(), rules: vec!["on".into()] }).unwrap();
        let b = u.plan(&UsersCmd::SetUser { name: "b".into(), rules: vec!["on".into()] }).unwrap();
        assert_eq!(int(u.apply(&a)), 2);
        let before = u.clone();
        assert_eq!(u.apply(&b), Reply::err(MOVED));
        assert_eq!(u, before);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut u = Users::default();
        change(&mut u, UsersCmd::Seed(vec![]));
        let before = u.clone();
        let bad = UsersCmd::SetUser { name: "t".into(), rules: vec!["on".into(), "+nosuch".into()] };
        assert_eq!(
            change(&mut u, bad),
            Reply::err("ERR Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL")
        );
        assert_eq!(
            change(&mut u, UsersCmd::SetUser { name: "a b".into(), rules: vec![] }),
            Reply::err("ERR Usernames can't contain spaces or null characters")
        );
        assert_eq!(
            change(&mut u, UsersCmd::DelUser(vec!["x".into(), "default".into()])),
            Reply::err("ERR The 'default' user cannot be removed")
        );
        assert!(matches!(change(&mut u, UsersCmd::Load(vec!["usr x".into()])), Reply::Error(_)));
        assert_eq!(u, before);
    }

    #[test]
    fn deluser_counts_and_load_replaces() {
        let mut u = Users::default();
        change(&mut u, UsersCmd::SetUser { name: "a".into(), rules: vec![] });
        assert!(u.lines.contains_key("default"), "the default user exists from the first change");
        assert_eq!(
            change(&mut u, UsersCmd::DelUser(vec!["a".into(), "nobody".into()])),
            Reply::Array(vec![Reply::Int(2), Reply::Int(1)])
        );
        assert_eq!(
            change(&mut u, UsersCmd::DelUser(vec!["a".into()])),
            Reply::Array(vec![Reply::Int(2), Reply::Int(0)])
        );
        assert_eq!(int(change(&mut u, UsersCmd::Load(vec!["user b on nopass ~* +get".into()]))), 3);
        assert_eq!(u.lines.keys().collect::<Vec<_>>(), ["b", "default"]);
    }
}
