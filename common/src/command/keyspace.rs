//! Strings, generic keyspace commands and keyspace-wide commands.

use bytes::Bytes;

use super::node::{ExpireCond, Expiry, NodeCommand, SetCond};
use super::table::CommandSpec;
use super::{common_slot, int_arg, Command, Fanout};
use crate::error::{Error, Result};

/// Commands on named keys.
pub fn parse_keyed(spec: &CommandSpec, argv: Vec<Bytes>) -> Result<Command> {
    if spec.name == "mset" && argv.len().is_multiple_of(2) {
        return Err(Error::Arity("mset".into()));
    }
    let idx = spec.key_indexes(&argv).ok_or(Error::Syntax)?;
    let slot = common_slot(&argv, &idx)?.ok_or(Error::Syntax)?;
    let key = argv[1].clone();
    let cmd = match spec.name {
        "get" => NodeCommand::Get { key },
        "set" => parse_set(key, &argv)?,
        "mget" => NodeCommand::MGet { keys: argv[1..].to_vec() },
        "mset" => {
            NodeCommand::MSet { pairs: argv[1..].chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect() }
        }
        "incr" => NodeCommand::IncrBy { key, delta: 1 },
        "decr" => NodeCommand::IncrBy { key, delta: -1 },
        "incrby" => NodeCommand::IncrBy { key, delta: int_arg(&argv[2])? },
        "decrby" => {
            let d = int_arg(&argv[2])?;
            NodeCommand::IncrBy { key, delta: d.checked_neg().ok_or(Error::Overflow)? }
        }
        "del" | "unlink" => NodeCommand::Del { keys: argv[1..].to_vec() },
        "exists" => NodeCommand::Exists { keys: argv[1..].to_vec() },
        "type" => NodeCommand::Type { key },
        "expire" | "pexpire" | "expireat" | "pexpireat" => parse_expire(spec.name, key, &argv)?,
        "ttl" => NodeCommand::Ttl { key, millis: false },
        "pttl" => NodeCommand::Ttl { key, millis: true },
        "persist" => NodeCommand::Persist { key },
        other => unreachable!("{other} is not a keyed keyspace command"),
    };
    Ok(Command::Keyed { slot, cmd })
}

fn parse_set(key: Bytes, argv: &[Bytes]) -> Result<NodeCommand> {
    let value = argv[2].clone();
    let (mut expire, mut keep_ttl, mut cond, mut get) = (None, false, SetCond::Always, false);
    let mut i = 3;
    while i < argv.len() {
        let opt = argv[i].to_ascii_uppercase();
        let next = argv.get(i + 1);
        match (opt.as_slice(), next) {
            (b"NX", _) if cond == SetCond::Always => cond = SetCond::IfAbsent,
            (b"XX", _) if cond == SetCond::Always => cond = SetCond::IfPresent,
            (b"GET", _) => get = true,
            (b"KEEPTTL", _) if expire.is_none() => keep_ttl = true,
            (b"EX" | b"PX" | b"EXAT" | b"PXAT", Some(v)) if expire.is_none() && !keep_ttl => {
                let n = int_arg(v)?;
                if n <= 0 {
                    return Err(Error::InvalidExpire("set".into()));
                }
                let ms = |n: i64| n.checked_mul(1000).ok_or_else(|| Error::InvalidExpire("set".into()));
                expire = Some(match opt.as_slice() {
                    b"EX" => Expiry::In(ms(n)?),
                    b"PX" => Expiry::In(n),
                    b"EXAT" => Expiry::At(ms(n)?),
                    _ => Expiry::At(n),
                });
                i += 1;
            }
            _ => return Err(Error::Syntax),
        }
        i += 1;
    }
    Ok(NodeCommand::Set { key, value, expire, keep_ttl, cond, get })
}

fn parse_expire(name: &str, key: Bytes, argv: &[Bytes]) -> Result<NodeCommand> {
    let n = int_arg(&argv[2])?;
    let invalid = || Error::InvalidExpire(name.to_owned());
    let at = match name {
        "expire" => Expiry::In(n.checked_mul(1000).ok_or_else(invalid)?),
        "pexpire" => Expiry::In(n),
        "expireat" => Expiry::At(n.checked_mul(1000).ok_or_else(invalid)?),
        _ => Expiry::At(n),
    };
    let mut cond = ExpireCond::Always;
    for opt in &argv[3..] {
        let c = match opt.to_ascii_uppercase().as_slice() {
            b"NX" => ExpireCond::Nx,
            b"XX" => ExpireCond::Xx,
            b"GT" => ExpireCond::Gt,
            b"LT" => ExpireCond::Lt,
            _ => return Err(Error::Verbatim(format!("ERR Unsupported option {}", String::from_utf8_lossy(opt)))),
        };
        if cond != ExpireCond::Always && cond != c {
            return Err(Error::Verbatim("ERR NX and XX, GT or LT options at the same time are not compatible".into()));
        }
        cond = c;
    }
    Ok(NodeCommand::Expire { key, at, cond })
}

/// KEYS, SCAN, DBSIZE, RANDOMKEY, FLUSHALL, FLUSHDB.
pub fn parse_fanout(spec: &CommandSpec, argv: Vec<Bytes>) -> Result<Fanout> {
    Ok(match spec.name {
        "keys" => Fanout::Keys { pattern: argv[1].clone() },
        "dbsize" => Fanout::DbSize,
        "randomkey" => Fanout::RandomKey,
        "flushall" | "flushdb" => {
            for a in &argv[1..] {
                if !(a.eq_ignore_ascii_case(b"ASYNC") || a.eq_ignore_ascii_case(b"SYNC")) || argv.len() > 2 {
                    return Err(Error::Syntax);
                }
            }
            Fanout::Flush
        }
        "scan" => {
            let cursor = std::str::from_utf8(&argv[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Error::Verbatim("ERR invalid cursor".into()))?;
            let (mut pattern, mut count, mut kind) = (None, 10usize, None);
            let mut i = 2;
            while i < argv.len() {
                let v = argv.get(i + 1).ok_or(Error::Syntax)?;
                match argv[i].to_ascii_uppercase().as_slice() {
                    b"MATCH" => pattern = Some(v.clone()),
                    b"COUNT" => {
                        let c = int_arg(v)?;
                        if c < 1 {
                            return Err(Error::Syntax);
                        }
                        count = usize::try_from(c).unwrap_or(usize::MAX).min(1 << 20);
                    }
                    b"TYPE" => kind = Some(v.clone()),
                    _ => return Err(Error::Syntax),
                }
                i += 2;
            }
            Fanout::Scan { cursor, pattern, count, kind }
        }
        other => unreachable!("{other} is not a fan-out command"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::argv;
    use super::super::{parse, ParseLimits};
    use super::*;

    fn node(s: &str) -> Result<NodeCommand> {
        match parse(argv(s), &ParseLimits::default())? {
            Command::Keyed { cmd, .. } => Ok(cmd),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_options() {
        match node("SET k v EX 10 NX GET").unwrap() {
            NodeCommand::Set { expire, cond, get, .. } => {
                assert_eq!(expire, Some(Expiry::In(10_000)));
                assert_eq!(cond, SetCond::IfAbsent);
                assert!(get);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(node("SET k v NX XX").unwrap_err(), Error::Syntax);
        assert_eq!(node("SET k v EX 0").unwrap_err().to_string(), "ERR invalid expire time in 'set' command");
        assert_eq!(node("SET k v EX x").unwrap_err(), Error::NotInteger);
        assert_eq!(node("SET k v EX").unwrap_err(), Error::Syntax);
        assert_eq!(node("SET k v KEEPTTL PX 5").unwrap_err(), Error::Syntax);
    }

    #[test]
    fn expire_and_incr() {
        assert_eq!(
            node("EXPIRE k 5 GT").unwrap(),
            NodeCommand::Expire { key: Bytes::from_static(b"k"), at: Expiry::In(5000), cond: ExpireCond::Gt }
        );
        assert_eq!(node("INCRBY k x").unwrap_err(), Error::NotInteger);
        assert_eq!(node("DECRBY k -9223372036854775808").unwrap_err(), Error::Overflow);
        assert_eq!(node("MSET a 1 b").unwrap_err().to_string(), "ERR wrong number of arguments for 'mset' command");
    }

    #[test]
    fn scan_options() {
        let f = |s: &str| match parse(argv(s), &ParseLimits::default()) {
            Ok(Command::Fanout(f)) => Ok(f),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            f("SCAN 0 MATCH a* COUNT 5").unwrap(),
            Fanout::Scan { cursor: 0, pattern: Some(Bytes::from_static(b"a*")), count: 5, kind: None }
        );
        assert_eq!(f("SCAN x").unwrap_err().to_string(), "ERR invalid cursor");
        assert_eq!(f("SCAN 0 COUNT 0").unwrap_err(), Error::Syntax);
        assert_eq!(f("SCAN 0 MATCH").unwrap_err(), Error::Syntax);
    }
}
