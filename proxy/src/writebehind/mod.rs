//! The write-behind path (DESIGN §2), built up piece by piece and not yet wired to sessions:
//! the PostgreSQL-exact lexer and the recognizer of the acknowledged statement forms.

pub mod lexer;
pub mod recognize;
