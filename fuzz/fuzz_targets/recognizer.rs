//! The statement recognizer: the lexer (both settings of standard_conforming_strings), the
//! statement splitter, the recognizer, and for recognized writes on the fixed catalog the
//! validation, the inbox COPY encoding, the WAL journal encoding and template preparation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use writebehind_proxy::writebehind::catalog::Catalog;
use writebehind_proxy::writebehind::lexer;

static CATALOG: OnceLock<Catalog> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let cat = CATALOG.get_or_init(writebehind_fuzz::catalog);
    let on = lexer::lex(sql, true);
    if sql.contains('\\') {
        // Only here do the two settings differ.
        let _ = lexer::lex(sql, false);
        writebehind_fuzz::simple_path(cat, sql, false);
    } else {
        assert_eq!(
            on,
            lexer::lex(sql, false),
            "standard_conforming_strings changed a text without backslashes"
        );
    }
    writebehind_fuzz::simple_path(cat, sql, true);
});
