//! Configuration: a TOML file (`--config`), every key also a `--kebab-case` flag and a
//! `WRITEBEHIND_SNAKE_CASE` environment variable; flags win over the file. Validated once.

use clap::Parser;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Durability of acknowledged writes (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledge from memory.
    Memory,
    /// Acknowledge after write() to the local WAL.
    Wal,
    /// Acknowledge after a group fsync of the local WAL.
    Fsync,
}

/// What happens when pending writes reach the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The client waits up to `overflow_timeout`, then gets SQLSTATE 53400.
    Block,
    /// The statement is sent to PostgreSQL directly, after a barrier.
    Sync,
    /// The client gets SQLSTATE 53400 at once.
    Error,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting, as read from the file and the command line (all optional there).
#[derive(Debug, Clone, Default, Deserialize, Parser)]
#[serde(deny_unknown_fields)]
#[command(
    name = "writebehind-proxy",
    version,
    about = "PostgreSQL proxy with write-behind"
)]
pub struct Settings {
    /// TOML file with any of the keys below (command-line flags override it).
    #[arg(long, env = "WRITEBEHIND_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address the proxy listens on for clients (default 127.0.0.1:6432).
    #[arg(long, env = "WRITEBEHIND_LISTEN")]
    pub listen: Option<String>,
    /// PostgreSQL to proxy to: `postgresql://USER@HOST:PORT[,HOST2:PORT2]/DB[?target_session_attrs=read-write]`.
    /// USER and DB are the identity of the proxy's own connections; clients use their own.
    #[arg(long, env = "WRITEBEHIND_UPSTREAM")]
    pub upstream: Option<String>,
    /// `memory`, `wal` (default) or `fsync`.
    #[arg(long, env = "WRITEBEHIND_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Directory of the local WAL (default `./writebehind-wal`).
    #[arg(long, env = "WRITEBEHIND_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// How often the WAL is fsynced in `wal` mode (default 1s).
    #[arg(long, env = "WRITEBEHIND_WAL_FSYNC_INTERVAL")]
    pub wal_fsync_interval: Option<String>,
    /// This proxy's id in `writebehind.progress` (default: generated and kept in the WAL dir).
    #[arg(long, env = "WRITEBEHIND_PROXY_ID")]
    pub proxy_id: Option<String>,
    /// The shortest a pending write waits before it ships, unless a barrier asks: a table
    /// waits its own registry flush_interval or this, whichever is longer (default 100ms).
    #[arg(long, env = "WRITEBEHIND_FLUSH_INTERVAL")]
    pub flush_interval: Option<String>,
    /// The most rows in one shipped batch (default 10000).
    #[arg(long, env = "WRITEBEHIND_MAX_BATCH_ROWS")]
    pub max_batch_rows: Option<usize>,
    /// Bound on acknowledged-but-unshipped rows (default 1000000).
    #[arg(long, env = "WRITEBEHIND_MAX_PENDING_ROWS")]
    pub max_pending_rows: Option<usize>,
    /// Bound on acknowledged-but-unshipped bytes (default 256 MiB).
    #[arg(long, env = "WRITEBEHIND_MAX_PENDING_BYTES")]
    pub max_pending_bytes: Option<usize>,
    /// `block` (default), `sync` or `error` when a pending bound is reached.
    #[arg(long, env = "WRITEBEHIND_OVERFLOW", value_enum)]
    pub overflow: Option<Overflow>,
    /// How long `overflow = block` waits before SQLSTATE 53400 (default 30s).
    #[arg(long, env = "WRITEBEHIND_OVERFLOW_TIMEOUT")]
    pub overflow_timeout: Option<String>,
    /// How long a read barrier waits for pending writes to apply (default 30s).
    #[arg(long, env = "WRITEBEHIND_BARRIER_TIMEOUT")]
    pub barrier_timeout: Option<String>,
    /// Address for Prometheus `/metrics` and `/health` (off by default).
    #[arg(long, env = "WRITEBEHIND_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Users allowed on the admin console (database `writebehind`), comma-separated.
    #[arg(long, env = "WRITEBEHIND_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Option<Vec<String>>,
    /// Directory for a Unix-domain socket `.s.PGSQL.<listen port>` that clients may use too
    /// (as PgBouncer's `unix_socket_dir`; off by default).
    #[arg(long, env = "WRITEBEHIND_UNIX_SOCKET_DIR")]
    pub unix_socket_dir: Option<PathBuf>,
    /// PEM certificate for TLS toward clients.
    #[arg(long, env = "WRITEBEHIND_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS toward clients.
    #[arg(long, env = "WRITEBEHIND_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The most client connections at once (default 1000).
    #[arg(long, env = "WRITEBEHIND_MAX_CLIENT_CONN")]
    pub max_client_conn: Option<usize>,
    /// The largest message a client may send, in bytes (default 64 MiB).
    #[arg(long, env = "WRITEBEHIND_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Timeout for connecting to PostgreSQL (default 10s).
    #[arg(long, env = "WRITEBEHIND_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<String>,
    /// Close client connections that have not sent their startup message this long after
    /// connecting (default 60s, as PgBouncer's client_login_timeout).
    #[arg(long, env = "WRITEBEHIND_LOGIN_TIMEOUT")]
    pub login_timeout: Option<String>,
    /// Close client connections idle this long (default 0 = never).
    #[arg(long, env = "WRITEBEHIND_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// On SIGTERM, how long sessions may take to finish (default 30s).
    #[arg(long, env = "WRITEBEHIND_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// `text` (default) or `json`.
    #[arg(long, env = "WRITEBEHIND_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Event loops (one thread each) that run the sessions: 0 (default) one per core, N that many.
    #[arg(long, env = "WRITEBEHIND_THREADS")]
    pub threads: Option<usize>,
}

/// A configuration error, reported before the proxy starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("`{key}` is required")]
    Missing { key: &'static str },
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub upstream: crate::session::upstream::UpstreamUrl,
    pub durability: Durability,
    pub wal_dir: PathBuf,
    pub wal_fsync_interval: Duration,
    pub proxy_id: Option<String>,
    pub flush_interval: Duration,
    pub max_batch_rows: usize,
    pub max_pending_rows: usize,
    pub max_pending_bytes: usize,
    pub overflow: Overflow,
    pub overflow_timeout: Duration,
    pub barrier_timeout: Duration,
    pub metrics_listen: Option<String>,
    pub admin_users: Vec<String>,
    pub unix_socket_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_client_conn: usize,
    pub max_message_size: usize,
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// Event loops for sessions (`event_loops`): 0 one per core, N that many.
    pub threads: usize,
}

macro_rules! merge {
    ($cli:ident, $file:ident, $($field:ident),*) => {
        Settings { config: $cli.config.clone(), $($field: $cli.$field.clone().or($file.$field.clone()),)* }
    };
}

impl Settings {
    /// Reads the file named by `--config` (if any) and lays the command line over it.
    pub fn merged(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<Settings>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => Settings::default(),
        };
        let cli = self;
        Ok(merge!(
            cli,
            file,
            listen,
            upstream,
            durability,
            wal_dir,
            wal_fsync_interval,
            proxy_id,
            flush_interval,
            max_batch_rows,
            max_pending_rows,
            max_pending_bytes,
            overflow,
            overflow_timeout,
            barrier_timeout,
            metrics_listen,
            admin_users,
            unix_socket_dir,
            tls_cert,
            tls_key,
            max_client_conn,
            max_message_size,
            connect_timeout,
            login_timeout,
            idle_timeout,
            shutdown_timeout,
            log_format,
            threads
        ))
    }

    /// Applies defaults and checks every value.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let upstream_text = self
            .upstream
            .ok_or(ConfigError::Missing { key: "upstream" })?;
        let upstream =
            crate::session::upstream::UpstreamUrl::parse(&upstream_text).map_err(|message| {
                ConfigError::Invalid {
                    key: "upstream",
                    message,
                }
            })?;
        let listen = self.listen.unwrap_or_else(|| "127.0.0.1:6432".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "listen",
                message: format!("{listen:?} is not an address like 127.0.0.1:6432"),
            });
        }
        let positive = |key: &'static str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::Invalid {
                key,
                message: "must be at least 1".into(),
            }),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let idle = duration("idle_timeout", self.idle_timeout, "0s")?;
        // As writebehind.progress takes it; stored in the WAL directory, so checked first.
        if let Some(id) = &self.proxy_id {
            if id.is_empty() || id.len() > 63 {
                return Err(ConfigError::Invalid {
                    key: "proxy_id",
                    message: format!("{id:?}: must be 1 to 63 bytes"),
                });
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                message: "tls_cert and tls_key must be given together".into(),
            });
        }
        Ok(Config {
            listen,
            upstream,
            durability: self.durability.unwrap_or(Durability::Wal),
            wal_dir: self
                .wal_dir
                .unwrap_or_else(|| PathBuf::from("writebehind-wal")),
            wal_fsync_interval: duration("wal_fsync_interval", self.wal_fsync_interval, "1s")?,
            proxy_id: self.proxy_id,
            flush_interval: nonzero(
                "flush_interval",
                duration("flush_interval", self.flush_interval, "100ms")?,
            )?,
            max_batch_rows: positive("max_batch_rows", self.max_batch_rows, 10_000)?,
            max_pending_rows: positive("max_pending_rows", self.max_pending_rows, 1_000_000)?,
            max_pending_bytes: positive("max_pending_bytes", self.max_pending_bytes, 256 << 20)?,
            overflow: self.overflow.unwrap_or(Overflow::Block),
            overflow_timeout: duration("overflow_timeout", self.overflow_timeout, "30s")?,
            barrier_timeout: duration("barrier_timeout", self.barrier_timeout, "30s")?,
            metrics_listen: self.metrics_listen,
            // `a, b` means a and b, as in PgBouncer's admin_users.
            admin_users: self
                .admin_users
                .unwrap_or_default()
                .iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            unix_socket_dir: self.unix_socket_dir.filter(|d| !d.as_os_str().is_empty()),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            max_client_conn: positive("max_client_conn", self.max_client_conn, 1000)?,
            max_message_size: positive("max_message_size", self.max_message_size, 64 << 20)?,
            connect_timeout: nonzero(
                "connect_timeout",
                duration("connect_timeout", self.connect_timeout, "10s")?,
            )?,
            login_timeout: nonzero(
                "login_timeout",
                duration("login_timeout", self.login_timeout, "60s")?,
            )?,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            shutdown_timeout: duration("shutdown_timeout", self.shutdown_timeout, "30s")?,
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            threads: match self.threads.unwrap_or(0) {
                n @ 0..=1024 => n,
                n => {
                    return Err(ConfigError::Invalid {
                        key: "threads",
                        message: format!("{n} threads: at most 1024"),
                    })
                }
            },
        })
    }
}

fn duration(key: &'static str, v: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let text = v.unwrap_or_else(|| default.to_string());
    humantime::parse_duration(text.trim()).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("{text:?} is not a duration like 100ms or 30s ({e})"),
    })
}

fn nonzero(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            key,
            message: "must be greater than zero".into(),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/operations.md documents exactly the keys the proxy accepts (every flag but
    /// `--config`), and every documented key is accepted.
    #[test]
    fn every_config_key_is_documented_and_every_documented_key_exists() {
        use clap::CommandFactory;
        let doc = include_str!("../../docs/operations.md");
        // The section "## Configuration keys", up to the next section.
        let doc = doc
            .split("\n## Configuration keys\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        let keys: Vec<String> = Settings::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config" && *l != "help" && *l != "version")
            .map(|l| l.replace('-', "_"))
            .collect();
        assert!(keys.len() > 20, "{keys:?}");
        // Rows of the key table: "| `key` | …" (several keys may share a row).
        let documented: Vec<String> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| {
                cell.split('`')
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 1)
                    .map(|(_, k)| k.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for k in &keys {
            assert!(
                documented.contains(k),
                "config key {k} missing from docs/operations.md"
            );
        }
        for d in &documented {
            assert!(
                keys.contains(d),
                "docs/operations.md documents {d}, which the proxy does not accept"
            );
        }
    }

    #[test]
    fn proxy_ids_fit_the_progress_table_and_admin_users_are_trimmed() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["writebehind-proxy", "--upstream", "postgresql://u@h/db"];
            args.extend_from_slice(extra);
            Settings::parse_from(args)
                .merged()
                .and_then(Settings::validate)
        };
        let long = "x".repeat(64);
        for bad in ["", long.as_str()] {
            assert!(parse(&["--proxy-id", bad]).is_err(), "{bad:?}");
        }
        assert!(parse(&["--proxy-id", &"x".repeat(63)]).is_ok());
        let cfg = parse(&["--admin-users", "nobody, postgres"]).expect("valid");
        assert_eq!(cfg.admin_users, ["nobody", "postgres"]);
    }

    #[test]
    fn file_keys_are_checked_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("wbcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("proxy.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nupstream = \"postgresql://u@h:5432/db\"\nflush_interval = \"250ms\"\n",
        )
        .expect("write");
        let cli = Settings::parse_from([
            "writebehind-proxy",
            "--config",
            path.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:7001",
        ]);
        let cfg = cli.merged().expect("merge").validate().expect("valid");
        assert_eq!(cfg.listen, "127.0.0.1:7001");
        assert_eq!(cfg.flush_interval, Duration::from_millis(250));
        assert_eq!(cfg.durability, Durability::Wal);

        std::fs::write(
            &path,
            "upstream = \"postgresql://u@h/db\"\nlisten_port = 5\n",
        )
        .expect("write");
        let cli = Settings::parse_from([
            "writebehind-proxy",
            "--config",
            path.to_str().expect("utf8"),
        ]);
        let err = cli.merged().expect_err("unknown key");
        assert!(err.to_string().contains("listen_port"), "{err}");

        let cli = Settings::parse_from([
            "writebehind-proxy",
            "--upstream",
            "postgresql://u@h/db",
            "--flush-interval",
            "soon",
        ]);
        let err = cli
            .merged()
            .expect("merge")
            .validate()
            .expect_err("bad duration");
        assert!(err.to_string().contains("flush_interval"), "{err}");

        let cli = Settings::parse_from(["writebehind-proxy"]);
        assert!(matches!(
            cli.merged().expect("merge").validate(),
            Err(ConfigError::Missing { key: "upstream" })
        ));
    }
}
