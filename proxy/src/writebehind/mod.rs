//! The write-behind path (DESIGN §2): the PostgreSQL-exact lexer, the recognizer of the
//! acknowledged statement forms, the catalog of registered tables, validation into changes,
//! the encoding of changes as inbox rows (one JSON row each, or packed), the read barrier's scope analysis and statement kinds, and the
//! per-database runtime sessions use.

pub mod catalog;
pub mod coalesce;
pub mod databases;
pub mod defaults;
pub mod encode;
pub mod journal;
pub mod lexer;
pub mod literal;
pub mod pack;
pub mod privileges;
pub mod queue;
pub mod recognize;
pub mod report;
pub mod reserved;
pub mod retired;
pub mod runtime;
pub mod scope;
pub mod statement_kind;
pub mod template;
pub mod validate;
