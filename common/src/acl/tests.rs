//! The rules against Redis 7.0.15's answers: each expected refusal below is
//! what `ACL DRYRUN` gave on a real redis-server for the same user and
//! command (tests/python/test_acl.py runs such a table against a live
//! redis-server too).

use super::*;

fn user(rules: &[&str]) -> User {
    let mut u = User::new("u");
    u.apply_all(rules).expect("rules apply");
    u
}

fn argv(words: &str) -> Vec<Bytes> {
    words.split_whitespace().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
}

/// `OK` or the DRYRUN refusal; keys only the parser finds are checked
/// once parsed, as the router does.
fn dryrun(u: &User, words: &str) -> String {
    use crate::command::{parse_spec, Command, ParseLimits};
    let a = argv(words);
    let spec = crate::command::table::lookup(&a[0]).expect("known command");
    let checked = u.check(spec, &a).and_then(|()| match (&spec.keys, parse_spec(spec, a, &ParseLimits::default())) {
        (KeySpec::Movable(_), Ok(Command::Keyed { cmd, .. })) => u.check_keys(key_access(spec, &[]), cmd.keys()),
        _ => Ok(()),
    });
    match checked {
        Ok(()) => "OK".into(),
        Err(e) => e.dryrun(),
    }
}

fn no_key(k: &str) -> String {
    format!("This user has no permissions to access the '{k}' key")
}

fn no_cmd(c: &str) -> String {
    format!("This user has no permissions to run the '{c}' command")
}

#[test]
fn the_default_user_may_do_everything() {
    let d = User::default_user();
    for c in ["get a", "set a 1", "flushall", "ai.tensorset t FLOAT 1 VALUES 1", "config set x y", "client kill x"] {
        assert_eq!(dryrun(&d, c), "OK", "{c}");
    }
    assert_eq!(d.describe(), "user default on nopass ~* &* +@all");
    assert!(d.password_ok(b"anything"));
    assert!(d.unrestricted);
    assert!(!user(&["+@all", "~*", "-client|kill"]).unrestricted);
    assert!(!user(&["+@all", "%R~*"]).unrestricted);
    assert_eq!(
        Denied::Key("k".into()).noperm(),
        "NOPERM this user has no permissions to access one of the keys used as arguments"
    );
}

#[test]
fn read_and_write_key_patterns_follow_the_key_specs() {
    // Redis: ACL SETUSER u4 on >p +@all %R~r* %W~w*
    let u = user(&["on", ">p", "+@all", "%R~r*", "%W~w*"]);
    let table = [
        ("get w1", no_key("w1")),
        ("set r1 x", no_key("r1")),
        ("incr w1", no_key("w1")),
        ("get r1", "OK".into()),
        ("set w1 x", "OK".into()),
        ("set w1 x get", no_key("w1")),
        ("del w1", "OK".into()),
        ("exists w1", "OK".into()),
        ("ttl w1", no_key("w1")),
        ("expire w1 10", "OK".into()),
        ("mget r1 w1", no_key("w1")),
        ("decrby w1 2", no_key("w1")),
        ("type w1", "OK".into()),
    ];
    for (cmd, want) in table {
        assert_eq!(dryrun(&u, cmd), want, "{cmd}");
    }
    assert_eq!(u.keys_text(), "%R~r* %W~w*");
}

#[test]
fn a_tenant_limited_to_its_keys_and_to_reads_and_ai() {
    let u = user(&["on", ">pw", "~{tenant1}*", "+@read", "+@ai", "-AI.MODELSTORE"]);
    assert_eq!(dryrun(&u, "get {tenant1}a"), "OK");
    assert_eq!(dryrun(&u, "get {tenant2}a"), no_key("{tenant2}a"));
    assert_eq!(dryrun(&u, "set {tenant1}a 1"), no_cmd("set"));
    assert_eq!(dryrun(&u, "ai.tensorget {tenant1}t VALUES"), "OK");
    assert_eq!(dryrun(&u, "ai.tensorset {tenant1}t FLOAT 1 VALUES 1"), "OK");
    assert_eq!(dryrun(&u, "ai.tensorset {tenant2}t FLOAT 1 VALUES 1"), no_key("{tenant2}t"));
    assert_eq!(dryrun(&u, "ai.modelstore {tenant1}m ONNX CPU BLOB x"), no_cmd("ai.modelstore"));
    assert_eq!(
        dryrun(&u, "ai.modelexecute {tenant1}m INPUTS 1 {tenant1}i OUTPUTS 1 out{tenant1}"),
        no_key("out{tenant1}")
    );
    // A DAG's keys wherever they are (LOAD and PERSIST as tensor names later on).
    let dag = "ai.dagexecute LOAD 1 {tenant1}a PERSIST 1 out{tenant1} |> AI.TENSORGET {tenant1}a VALUES \
               |> AI.TENSORSET out{tenant1} FLOAT 1 VALUES 1 |> AI.TENSORSET LOAD FLOAT 1 VALUES 1";
    assert_eq!(dryrun(&u, dag), no_key("out{tenant1}"));
    // @ai holds every AI.* command, AI.CONFIG too (it is also @dangerous).
    assert_eq!(dryrun(&u, "ai.config BACKENDSPATH /tmp"), "OK");
    // AUTH, HELLO and QUIT need no permission.
    assert_eq!(dryrun(&u, "hello 3"), "OK");
    assert_eq!(dryrun(&u, "quit"), "OK");
    assert_eq!(
        u.describe(),
        format!("user u on #{} ~{{tenant1}}* resetchannels -@all +@read +@ai -ai.modelstore", hash_password(b"pw"))
    );
}

#[test]
fn ai_commands_have_categories() {
    let cats = |n: &str| categories(crate::command::table::lookup(n.as_bytes()).unwrap());
    assert!(cats("ai.tensorget").contains(&"read") && cats("ai.tensorget").contains(&"ai"));
    assert!(cats("ai.modelstore").contains(&"ai-write") && cats("ai.modelstore").contains(&"write"));
    assert!(cats("ai.config").contains(&"dangerous") && cats("ai.config").contains(&"admin"));
    assert!(cats("flushall").contains(&"dangerous"));
    let u = user(&["on", "nopass", "~*", "+@all", "-@dangerous"]);
    assert_eq!(dryrun(&u, "flushall"), no_cmd("flushall"));
    assert_eq!(dryrun(&u, "ai.config LOADBACKEND TORCH x"), no_cmd("ai.config"));
    assert_eq!(dryrun(&u, "ai.modelstore m ONNX CPU BLOB x"), "OK");
}

#[test]
fn subcommands() {
    // Redis: ACL SETUSER u9 +@all -client|kill
    let u = user(&["+@all", "-client|kill", "~*"]);
    assert_eq!(dryrun(&u, "client kill x"), no_cmd("client|kill"));
    assert_eq!(dryrun(&u, "client list"), "OK");
    assert_eq!(u.commands_text(), "+@all -client|kill");
    // Redis: ACL SETUSER u2 +config|get -config|set
    let u = user(&["+config|get", "-config|set"]);
    assert_eq!(dryrun(&u, "config get x"), "OK");
    assert_eq!(dryrun(&u, "config set x y"), no_cmd("config|set"));
    // A later +config allows every subcommand again.
    let u = user(&["+@all", "-config|set", "+config"]);
    assert_eq!(dryrun(&u, "config set x y"), "OK");
}

#[test]
fn rule_errors_in_redis_words_and_nothing_applied() {
    let mut u = user(&["on", ">a"]);
    let before = u.clone();
    let cases = [
        ("<c", "The password you are trying to remove from the user does not exist"),
        ("#abc", "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters"),
        ("bogus", "Syntax error"),
        ("+nosuchcmd", "Unknown command or category name in ACL"),
        ("+@nosuchcat", "Unknown command or category name in ACL"),
        ("%X~a", "Syntax error"),
        ("(~x)", "Selectors are not supported"),
        ("-get|x", "Unknown command or category name in ACL"),
        ("%RR~x", "Syntax error"),
    ];
    for (rule, reason) in cases {
        let e = u.apply_all(&[">b", rule]).unwrap_err();
        assert_eq!(e.message(), format!("ERR Error in ACL SETUSER modifier '{rule}': {reason}"));
        assert_eq!(u, before, "a failed SETUSER changes nothing");
    }
}

#[test]
fn patterns_after_the_star_pattern() {
    // Redis 7.0.15's answers.
    let after_keys = "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns";
    for rules in [&["~*", "~foo"][..], &["allkeys", "%R~x"]] {
        let e = User::new("u").apply_all(rules).unwrap_err();
        assert_eq!((e.rule.as_str(), e.reason), (rules[1], after_keys));
    }
    let e = User::new("u").apply_all(&["&*", "&foo"]).unwrap_err();
    assert!(e.reason.starts_with("Adding a pattern after the * pattern (or the 'allchannels' flag)"));
    assert_eq!(user(&["%R~x", "~*"]).keys_text(), "~*");
    assert_eq!(user(&["%R~*", "~a"]).keys_text(), "%R~* ~a");
    assert_eq!(user(&["%W~*", "%R~*"]).keys_text(), "~*");
    assert_eq!(user(&["~*", "resetkeys", "~a"]).keys_text(), "~a");
}

#[test]
fn passwords() {
    let mut u = user(&[">secret"]);
    assert!(!u.password_ok(b"secret"), "an 'off' user matches no password");
    u.apply("on").unwrap();
    assert!(u.password_ok(b"secret"));
    assert!(!u.password_ok(b"other"));
    u.apply(&format!("#{}", hash_password(b"other"))).unwrap();
    assert!(u.password_ok(b"other"));
    u.apply("<secret").unwrap();
    assert!(!u.password_ok(b"secret"));
    u.apply("nopass").unwrap();
    assert!(u.password_ok(b"whatever") && u.passwords.is_empty());
    u.apply(">x").unwrap();
    assert!(!u.nopass, "a password clears nopass (Redis: SETUSER u8 on nopass >x shows no nopass flag)");
    u.apply("resetpass").unwrap();
    assert!(!u.password_ok(b"x"));
    // Redis's hash of "p".
    assert_eq!(hash_password(b"p"), "148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940");
}

#[test]
fn descriptions() {
    assert_eq!(User::new("u1").describe(), "user u1 off resetchannels -@all");
    let u = user(&["+config|get", "allkeys", "allchannels"]);
    assert_eq!(u.describe(), "user u off ~* &* -@all +config|get");
    let mut r = user(&["on", "~a", "+@all"]);
    r.apply("reset").unwrap();
    assert_eq!(r.describe(), "user u off sanitize-payload resetchannels -@all");
    let u = user(&["on", "nopass", "+@all", "-@dangerous", "~*"]);
    assert_eq!(u.describe(), "user u on nopass ~* resetchannels +@all -@dangerous");
}

#[test]
fn acl_files() {
    let users = parse_file(
        "# tenants\nuser default on >admin ~* &* +@all\n\nuser t1 on >pw ~{tenant1}* +@read +@ai -ai.modelstore\n",
    )
    .unwrap();
    assert_eq!(users.len(), 2);
    assert!(users[0].password_ok(b"admin") && !users[0].nopass);
    assert_eq!(dryrun(&users[1], "set {tenant1}x 1"), no_cmd("set"));
    assert!(parse_file("usr x on").unwrap_err().contains("line 1"));
    assert!(parse_file("user a on\nuser a off").unwrap_err().contains("defined twice"));
    assert!(parse_file("user a on +nosuch").unwrap_err().contains("Unknown command"));
}

#[test]
fn descriptions_read_back_as_the_same_user() {
    // The cluster keeps users as their `ACL LIST` lines: each must parse
    // back to a user that describes, and checks, the same.
    let cases: &[&[&str]] = &[
        &[],
        &["on", "nopass", "~*", "&*", "+@all"],
        &["on", ">pw", "~{tenant1}*", "+@read", "+@ai", "-ai.modelstore"],
        &["on", "%R~r*", "%W~w*", "~rw*", "+@all", "-@dangerous", "+config|get", "-client|kill"],
        &["off", "#148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940", "&chan", "-@all", "+get"],
        &["reset", "on", "allkeys", "allcommands", "-flushall"],
    ];
    for rules in cases {
        let u = user(rules);
        let line = u.describe();
        let back = parse_file(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].describe(), line);
        for cmd in ["get {tenant1}a", "set rw1 v", "get r1", "set w1 v", "flushall", "config get x", "client kill x"] {
            assert_eq!(dryrun(&back[0], cmd), dryrun(&u, cmd), "{line}: {cmd}");
        }
        assert_eq!(back[0].unrestricted(), u.unrestricted(), "{line}");
    }
}

#[test]
fn names_and_patterns_with_spaces_are_refused() {
    // Redis 7.0.15's answers.
    assert_eq!(check_name(b"a b").unwrap_err(), "ERR Usernames can't contain spaces or null characters");
    assert_eq!(check_name(b"alice"), Ok("alice"));
    assert!(check_name("a\u{2003}b".as_bytes()).is_err(), "any white space");
    let e = User::new("u").apply("+config|get x").unwrap_err();
    assert_eq!(
        e.message(),
        "ERR Error in ACL SETUSER modifier '+config|get x': Unknown command or category name in ACL"
    );
    for rule in ["~a b", "%R~a b", "&a b", "~a\u{2003}b"] {
        let e = User::new("u").apply(rule).unwrap_err();
        assert_eq!(e.message(), format!("ERR Error in ACL SETUSER modifier '{rule}': Syntax error"));
    }
}
