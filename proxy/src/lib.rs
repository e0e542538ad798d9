//! writebehind-proxy: a PostgreSQL wire-protocol proxy (placeholder until the proxy issue lands).
