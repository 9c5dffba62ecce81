//! The cluster's ACL users, kept by the meta group beside the cluster map,
//! so that every router enforces the same users and they outlive any
//! router or node.
//!
//! Each user is kept as its `ACL LIST` line (Redis's ACL file format:
//! passwords as SHA-256 only), which every release reads the same way. A
//! change is a [`UsersOp`] in the meta group's log, applied with the same
//! rules code the routers check with (`tessera_common::acl`), so every
//! replica computes the same lines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::acl::{self, User};
use tessera_common::command::UsersCmd;
use tessera_common::reply::Reply;

/// A change to the users (a meta-group log entry; see [`UsersCmd`] for
/// what each does).
pub type UsersOp = UsersCmd;

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
    /// Applies `op`; the reply is the new version (DELUSER:
    /// `[version, deleted]`) or an error, and then nothing changed.
    /// Deterministic.
    pub fn apply(&mut self, op: &UsersOp) -> Reply {
        match op {
            UsersCmd::List => return self.list(),
            UsersCmd::Seed(_) if self.version > 0 => return Reply::Int(self.version as i64),
            UsersCmd::Seed(lines) | UsersCmd::Load(lines) => match parse(lines) {
                Ok(users) => self.lines = users,
                Err(e) => return Reply::err(format!("ERR {e}")),
            },
            UsersCmd::SetUser { name, rules } => {
                if let Err(e) = acl::check_name(name.as_bytes()) {
                    return Reply::err(e);
                }
                let mut user = match self.user(name) {
                    Ok(u) => u,
                    Err(e) => return e,
                };
                if let Err(e) = user.apply_all(rules) {
                    return Reply::err(e.message());
                }
                self.ensure_default();
                self.lines.insert(name.clone(), user.describe());
            }
            UsersCmd::DelUser(names) => {
                if names.iter().any(|n| n == "default") {
                    return Reply::err("ERR The 'default' user cannot be removed");
                }
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

/// ACL file lines as kept: each user's description, by name, with Redis's
/// default user when the lines do not define one.
fn parse(lines: &[String]) -> Result<BTreeMap<String, String>, String> {
    let users = acl::parse_file(&lines.join("\n"))?;
    let mut out: BTreeMap<String, String> = users.iter().map(|u| (u.name.clone(), u.describe())).collect();
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

    #[test]
    fn seed_once_then_changes_bump_the_version() {
        let mut u = Users::default();
        let seed =
            vec!["user default on #148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940 ~* &* +@all"
                .to_string()];
        assert_eq!(int(u.apply(&UsersCmd::Seed(seed.clone()))), 1);
        assert_eq!(int(u.apply(&UsersCmd::Seed(vec![]))), 1, "a later seed changes nothing");
        assert!(u.lines["default"].contains("#148de9"));
        let set = UsersCmd::SetUser { name: "t1".into(), rules: vec!["on".into(), "~{t1}*".into(), "+@read".into()] };
        assert_eq!(int(u.apply(&set)), 2);
        assert_eq!(u.lines["t1"], "user t1 on ~{t1}* resetchannels -@all +@read");
        // Applied to the kept user: a second SETUSER adds to the first.
        assert_eq!(int(u.apply(&UsersCmd::SetUser { name: "t1".into(), rules: vec!["+@ai".into()] })), 3);
        assert_eq!(u.lines["t1"], "user t1 on ~{t1}* resetchannels -@all +@read +@ai");
    }

    #[test]
    fn refusals_change_nothing() {
        let mut u = Users::default();
        u.apply(&UsersCmd::Seed(vec![]));
        let before = u.clone();
        let bad = UsersCmd::SetUser { name: "t".into(), rules: vec!["on".into(), "+nosuch".into()] };
        assert_eq!(
            u.apply(&bad),
            Reply::err("ERR Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL")
        );
        assert_eq!(
            u.apply(&UsersCmd::SetUser { name: "a b".into(), rules: vec![] }),
            Reply::err("ERR Usernames can't contain spaces or null characters")
        );
        assert_eq!(
            u.apply(&UsersCmd::DelUser(vec!["x".into(), "default".into()])),
            Reply::err("ERR The 'default' user cannot be removed")
        );
        assert!(matches!(u.apply(&UsersCmd::Load(vec!["usr x".into()])), Reply::Error(_)));
        assert_eq!(u, before);
    }

    #[test]
    fn deluser_counts_and_load_replaces() {
        let mut u = Users::default();
        u.apply(&UsersCmd::SetUser { name: "a".into(), rules: vec![] });
        assert!(u.lines.contains_key("default"), "the default user exists from the first change");
        assert_eq!(
            u.apply(&UsersCmd::DelUser(vec!["a".into(), "nobody".into()])),
            Reply::Array(vec![Reply::Int(2), Reply::Int(1)])
        );
        assert_eq!(u.apply(&UsersCmd::DelUser(vec!["a".into()])), Reply::Array(vec![Reply::Int(2), Reply::Int(0)]));
        assert_eq!(int(u.apply(&UsersCmd::Load(vec!["user b on nopass ~* +get".into()]))), 3);
        assert_eq!(u.lines.keys().collect::<Vec<_>>(), ["b", "default"]);
    }
}
