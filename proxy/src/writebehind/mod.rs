//! The write-behind path (DESIGN §2), built up piece by piece: today the PostgreSQL-exact lexer
//! that statement recognition will stand on. Not yet wired to sessions.

pub mod lexer;
