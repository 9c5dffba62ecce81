//! What `ACL LIST` and `ACL GETUSER` say of a user (and an ACL file holds).

use std::fmt::Write as _;

use super::User;

/// A field's value in `ACL GETUSER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetUserValue {
    List(Vec<String>),
    Text(String),
}

impl User {
    /// The flags `ACL GETUSER` lists.
    pub fn flags(&self) -> Vec<&'static str> {
        let mut f = vec![if self.enabled { "on" } else { "off" }];
        if self.nopass {
            f.push("nopass");
        }
        match self.sanitize_payload {
            Some(true) => f.push("sanitize-payload"),
            Some(false) => f.push("skip-sanitize-payload"),
            None => {}
        }
        f
    }

    /// `+@all -get ...`, as `ACL GETUSER` gives it.
    pub fn commands_text(&self) -> String {
        let mut s = String::from(if self.all_commands_base { "+@all" } else { "-@all" });
        for r in &self.command_rules {
            s.push(' ');
            s.push_str(r);
        }
        s
    }

    /// `~a* %R~b*`, as `ACL GETUSER` gives it.
    pub fn keys_text(&self) -> String {
        let mut out = Vec::new();
        for k in &self.keys {
            let p = String::from_utf8_lossy(&k.pattern);
            out.push(match (k.read, k.write) {
                (true, true) => format!("~{p}"),
                (true, false) => format!("%R~{p}"),
                _ => format!("%W~{p}"),
            });
        }
        out.join(" ")
    }

    fn channels_text(&self) -> String {
        match self.all_channels {
            true => "&*".to_string(),
            false => self.channels.iter().map(|c| format!("&{c}")).collect::<Vec<_>>().join(" "),
        }
    }

    /// The `ACL LIST` line (and the ACL file's): `user <name> on ...`.
    pub fn describe(&self) -> String {
        let mut s = format!("user {}", self.name);
        for f in self.flags() {
            let _ = write!(s, " {f}");
        }
        for p in &self.passwords {
            let _ = write!(s, " #{p}");
        }
        let keys = self.keys_text();
        if !keys.is_empty() {
            let _ = write!(s, " {keys}");
        }
        match self.channels_text() {
            c if self.all_channels => {
                let _ = write!(s, " {c}");
            }
            c if c.is_empty() => s.push_str(" resetchannels"),
            c => {
                let _ = write!(s, " resetchannels {c}");
            }
        }
        let _ = write!(s, " {}", self.commands_text());
        s
    }

    /// `ACL GETUSER`'s fields: flags, passwords, commands, keys, channels,
    /// selectors (always none).
    pub fn getuser_fields(&self) -> Vec<(&'static str, GetUserValue)> {
        vec![
            ("flags", GetUserValue::List(self.flags().into_iter().map(String::from).collect())),
            ("passwords", GetUserValue::List(self.passwords.iter().cloned().collect())),
            ("commands", GetUserValue::Text(self.commands_text())),
            ("keys", GetUserValue::Text(self.keys_text())),
            ("channels", GetUserValue::Text(self.channels_text())),
            ("selectors", GetUserValue::List(Vec::new())),
        ]
    }
}
