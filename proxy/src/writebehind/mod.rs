//! The write-behind path (DESIGN §2), built up piece by piece and not yet wired to sessions:
//! the PostgreSQL-exact lexer, the recognizer of the acknowledged statement forms, and the
//! encoding of changes as inbox rows.

pub mod encode;
pub mod lexer;
pub mod recognize;
