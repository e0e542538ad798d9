//! Median cost of lexing + recognizing statements (bench/recognize prints it).

use std::time::Instant;
use writebehind_proxy::writebehind::{lexer, recognize};

fn median_ns(mut f: impl FnMut() -> bool, rounds: usize, per_round: usize) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            assert!(f());
        }
        samples.push(start.elapsed().as_nanos() as f64 / per_round as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn main() {
    let cases = [
        ("simple INSERT, 4 columns", "INSERT INTO events (id, kind, payload, at) VALUES (42, 'click', 'some payload text', '2024-01-01 10:00:00+00')"),
        ("simple UPDATE increment", "UPDATE counters SET n = n + 1 WHERE id = 12345"),
        ("simple DELETE", "DELETE FROM sessions WHERE id = 'b1a2c3d4-0000-4000-8000-000000000001'"),
        ("prepared UPDATE text", "UPDATE counters SET n = n + $1 WHERE id = $2"),
        ("multi-row INSERT, 10 rows", "INSERT INTO t (id, v) VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e'),(6,'f'),(7,'g'),(8,'h'),(9,'i'),(10,'j')"),
    ];
    println!("{:<28}{:>14}", "statement", "median ns");
    for (name, sql) in cases {
        let ns = median_ns(
            || {
                lexer::lex(sql, true)
                    .ok()
                    .and_then(|t| recognize::recognize(&t))
                    .is_some()
            },
            51,
            2000,
        );
        println!("{name:<28}{ns:>14.0}");
    }
}
