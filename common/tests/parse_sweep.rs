//! Every command in the table, with 0 to 8 arguments drawn from a
//! vocabulary of odd values (empty, NUL bytes, huge and negative numbers,
//! every keyword the parsers look for), goes through the parser: each must
//! come back as a command or an error, never a panic. A fixed seed, so a
//! failure names its arguments and repeats; `TESSERA_SWEEP_CASES` raises the
//! number of draws per command and argument count (default 40).

use bytes::Bytes;
use tessera_common::command::{parse, table, ParseLimits};

include!("support/odd_values.rs");

/// A small deterministic generator (splitmix64).
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn word(&mut self) -> Bytes {
        Bytes::from_static(VOCABULARY[(self.next() % VOCABULARY.len() as u64) as usize])
    }
}

#[test]
fn no_command_panics_the_parser_whatever_its_arguments() {
    let cases: usize = std::env::var("TESSERA_SWEEP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let limits = ParseLimits::default();
    let mut draw = Draw(0x7E55E7A);
    let mut parsed = 0usize;
    let mut panics = Vec::new();
    // Silence the default hook's message per panic; each is reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for spec in table::COMMANDS {
        // Sub-commands first (`CLUSTER INFO`, `CLIENT SETNAME`, ...): the
        // vocabulary holds them, so draws reach their parsers too.
        for n in 0..=8 {
            for _ in 0..cases {
                let mut argv = vec![Bytes::from(spec.name.to_ascii_uppercase())];
                argv.extend((0..n).map(|_| draw.word()));
                let shown: Vec<String> = argv.iter().map(|a| format!("{:?}", String::from_utf8_lossy(a))).collect();
                match std::panic::catch_unwind(|| parse(argv, &limits)) {
                    Ok(_) => parsed += 1,
                    Err(_) => panics.push(shown.join(" ")),
                }
            }
        }
    }
    std::panic::set_hook(hook);
    panics.sort();
    panics.dedup();
    eprintln!("{parsed} command lines parsed (or refused) without a panic; {} panicked", panics.len());
    assert!(
        panics.is_empty(),
        "{} command lines panicked the parser, e.g.:\n{}",
        panics.len(),
        panics[..panics.len().min(20)].join("\n")
    );
}
