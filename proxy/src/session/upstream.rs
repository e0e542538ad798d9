//! The upstream PostgreSQL: its URL (one or more hosts, TCP or Unix-socket directories) and
//! opening a client session's own connection to the current primary.

use super::tls::Stream;
use std::time::Duration;
use tokio::net::{TcpStream, UnixStream};

/// How client sessions' upstream connections use TLS (libpq's `sslmode` subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext.
    Disable,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is not verified (as libpq's `require`).
    Require,
}

impl SslMode {
    /// The same mode for the proxy's own connections (with [`OwnTls`](super::own_tls::OwnTls)).
    pub fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// A parsed `postgresql://USER@HOST:PORT[,HOST:PORT…]/DB[?target_session_attrs=…&sslmode=…]` URL.
/// As in libpq, a host that starts with `/` (given as `?host=/var/run/postgresql` or
/// percent-encoded in the authority) is the directory of PostgreSQL's Unix-domain socket, and
/// `?host=` / `?port=` override the authority's hosts and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// The proxy's own user for its connections.
    pub user: String,
    /// The proxy's own database.
    pub dbname: String,
    /// Hosts in the order they are tried (a host starting with `/` is a socket directory).
    pub hosts: Vec<(String, u16)>,
    /// Whether only a read-write server (a primary) may be used.
    pub read_write: bool,
    /// TLS toward PostgreSQL for client sessions.
    pub sslmode: SslMode,
    /// The password of the proxy's own user, if the URL gives one (`user:password@`).
    pub password: Option<String>,
    /// The URL as given, its password replaced by `***` (for logs and SHOW CONFIG).
    pub text: String,
}

/// `%XX` escapes decoded, as in a libpq URL's user and password.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl UpstreamUrl {
    /// Parses the URL; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("postgresql://")
            .or_else(|| text.strip_prefix("postgres://"))
            .ok_or("must start with postgresql://")?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, dbname) = main.split_once('/').unwrap_or((main, "postgres"));
        let (user, password, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => match u.split_once(':') {
                Some((u, p)) => (percent_decoded(u), Some(percent_decoded(p)), h),
                None => (percent_decoded(u), None, h),
            },
            None => ("postgres".to_string(), None, authority),
        };
        let shown = match (&password, authority.rsplit_once('@')) {
            (Some(_), Some((u, _))) => {
                text.replacen(u, &format!("{}:***", u.split(':').next().unwrap_or("")), 1)
            }
            _ => text.to_string(),
        };
        let mut host_param = None;
        let mut port_param = None;
        let mut read_write = false;
        let mut sslmode = SslMode::Prefer;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("host", v)) => host_param = Some(percent_decoded(v)),
                Some(("port", v)) => port_param = Some(percent_decoded(v)),
                Some(("target_session_attrs", "read-write")) => read_write = true,
                Some(("target_session_attrs", "any")) => read_write = false,
                Some(("target_session_attrs", other)) => {
                    return Err(format!(
                        "target_session_attrs={other} is not supported (any, read-write)"
                    ))
                }
                Some(("sslmode", "disable")) => sslmode = SslMode::Disable,
                Some(("sslmode", "prefer")) | Some(("sslmode", "allow")) => {
                    sslmode = SslMode::Prefer
                }
                Some(("sslmode", "require")) => sslmode = SslMode::Require,
                Some(("sslmode", other)) => {
                    return Err(format!(
                        "sslmode={other} is not supported (disable, prefer, require)"
                    ))
                }
                _ => {}
            }
        }
        // The authority's hosts, each with its port if it gives one.
        let mut given = Vec::new();
        for h in hostlist.split(',') {
            let (host, port) = match h.rsplit_once(':').filter(|_| !h.ends_with(']')) {
                Some((host, port)) => (
                    host,
                    Some(
                        port.parse::<u16>()
                            .map_err(|_| format!("bad port in {h:?}"))?,
                    ),
                ),
                None => (h, None),
            };
            given.push((
                percent_decoded(host.trim_matches(|c| c == '[' || c == ']')),
                port,
            ));
        }
        // `?host=` replaces the authority's hosts, whose ports (`postgresql://:5491/db?host=/s`)
        // then count as a port list, as `?port=` does (which wins).
        let (mut hosts, mut ports): (Vec<(String, u16)>, Vec<u16>) = match &host_param {
            Some(list) => (
                list.split(',').map(|h| (h.to_string(), 5432)).collect(),
                given.iter().filter_map(|(_, p)| *p).collect(),
            ),
            None => (
                given
                    .iter()
                    .map(|(h, p)| (h.clone(), p.unwrap_or(5432)))
                    .collect(),
                Vec::new(),
            ),
        };
        if hosts.iter().any(|(h, _)| h.is_empty()) {
            return Err(
                "empty host (give host:port, or a Unix-socket directory as ?host=/var/run/postgresql)"
                    .into(),
            );
        }
        if let Some(list) = &port_param {
            ports = list
                .split(',')
                .map(|p| p.parse::<u16>().map_err(|_| format!("bad port {p:?}")))
                .collect::<Result<Vec<_>, _>>()?;
        }
        match ports.as_slice() {
            [] => {}
            [one] => hosts.iter_mut().for_each(|h| h.1 = *one),
            many if many.len() == hosts.len() => {
                hosts.iter_mut().zip(many).for_each(|(h, p)| h.1 = *p)
            }
            _ => {
                return Err(format!(
                    "{} ports given for {} hosts",
                    ports.len(),
                    hosts.len()
                ))
            }
        }
        let local = hosts.iter().filter(|(h, _)| is_socket_dir(h)).count();
        if sslmode == SslMode::Require && local > 0 && local < hosts.len() {
            // libpq would skip TLS on the socket only; tokio-postgres, which the proxy's own
            // connections use, has one sslmode for every host.
            return Err(
                "sslmode=require with both Unix-socket and TCP hosts is not supported: list one kind"
                    .into(),
            );
        }
        Ok(Self {
            user: if user.is_empty() {
                "postgres".into()
            } else {
                user
            },
            dbname: if dbname.is_empty() {
                "postgres".into()
            } else {
                dbname.to_string()
            },
            hosts,
            read_write,
            sslmode,
            password,
            text: shown,
        })
    }

    /// A tokio-postgres config for the proxy's own connection to `dbname` on every host.
    pub fn pg_config(&self, dbname: &str, connect_timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user)
            .dbname(dbname)
            .connect_timeout(connect_timeout);
        c.application_name("writebehind-proxy");
        // The own connections read the catalog and ask privileges, often as a superuser: a
        // database's search_path (its owner's to set) must not put a schema before
        // pg_catalog, whose objects would stand in for PostgreSQL's own. It also makes
        // `pg_get_expr` print every name outside pg_catalog qualified (`writebehind/defaults.rs`).
        c.options("-c search_path=pg_catalog,pg_temp");
        if let Some(p) = &self.password {
            c.password(p);
        }
        c.ssl_mode(self.own_sslmode(self.hosts.iter().map(|(h, _)| h.as_str())));
        for (h, p) in &self.hosts {
            c.host(h).port(*p);
        }
        if self.read_write {
            c.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        }
        c
    }

    /// The sslmode of the proxy's own connections to `hosts`: as libpq, no TLS over a
    /// Unix-domain socket (tokio-postgres would try it), so none when every host is one.
    fn own_sslmode<'a>(
        &self,
        mut hosts: impl Iterator<Item = &'a str>,
    ) -> tokio_postgres::config::SslMode {
        if hosts.all(is_socket_dir) {
            tokio_postgres::config::SslMode::Disable
        } else {
            self.sslmode.for_tokio_postgres()
        }
    }
}

/// Whether a host of the URL is a Unix-socket directory (it starts with `/`, as in libpq).
fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// Where a host of the URL is reached: `host:port`, or for a socket directory the socket's
/// path (`DIR/.s.PGSQL.PORT`, PostgreSQL's naming).
pub fn endpoint(host: &str, port: u16) -> String {
    if is_socket_dir(host) {
        format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/'))
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to an [`endpoint`]: a Unix-domain socket for a path, else TCP without Nagle.
pub async fn dial(endpoint: &str) -> std::io::Result<Stream> {
    if endpoint.starts_with('/') {
        Ok(Stream::Unix(UnixStream::connect(endpoint).await?))
    } else {
        let s = TcpStream::connect(endpoint).await?;
        s.set_nodelay(true)?;
        Ok(Stream::Plain(s))
    }
}

/// Opens a connection for a client session: the first host that accepts, or with
/// `read-write`, the first host that is not in recovery (checked through the proxy's own login).
/// Returns the stream, its [`endpoint`] and the host's name (for TLS).
pub async fn connect(
    url: &UpstreamUrl,
    timeout: Duration,
) -> std::io::Result<(Stream, String, String)> {
    let mut last_err = std::io::Error::new(std::io::ErrorKind::NotFound, "no upstream host");
    for (host, port) in &url.hosts {
        let addr = endpoint(host, *port);
        if url.read_write && url.hosts.len() > 1 && !is_primary(url, host, *port, timeout).await {
            continue;
        }
        match tokio::time::timeout(timeout, dial(&addr)).await {
            Ok(Ok(s)) => return Ok((s, addr, host.clone())),
            Ok(Err(e)) => {
                last_err = std::io::Error::new(e.kind(), format!("connecting to {addr}: {e}"))
            }
            Err(_) => {
                last_err = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                )
            }
        }
    }
    Err(last_err)
}

async fn is_primary(url: &UpstreamUrl, host: &str, port: u16, timeout: Duration) -> bool {
    let mut c = tokio_postgres::Config::new();
    c.user(&url.user)
        .dbname(&url.dbname)
        .host(host)
        .port(port)
        .connect_timeout(timeout)
        .ssl_mode(url.own_sslmode(std::iter::once(host)));
    let tls = super::own_tls::OwnTls::new();
    let Ok(Ok((client, conn))) = tokio::time::timeout(timeout, c.connect(tls)).await else {
        return false;
    };
    let task = tokio::spawn(conn);
    let primary = matches!(
        client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map(|r| r.get::<_, bool>(0)),
        Ok(false)
    );
    drop(client);
    let _ = task.await;
    primary
}

/// Negotiates TLS on a fresh upstream connection per `sslmode` (SSLRequest, then a handshake
/// if the server answers `S`). A Unix-domain socket stays plain, as libpq leaves it.
pub async fn negotiate_tls(
    stream: Stream,
    host: &str,
    sslmode: SslMode,
    connector: Option<&tokio_rustls::TlsConnector>,
) -> std::io::Result<Stream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(connector) = connector.filter(|_| sslmode != SslMode::Disable) else {
        return Ok(stream);
    };
    let mut tcp = match stream {
        Stream::Plain(tcp) => tcp,
        other => return Ok(other),
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8i32.to_be_bytes());
    request[4..].copy_from_slice(&crate::protocol::startup::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await?;
    match tcp.read_u8().await? {
        b'S' => {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(Stream::Tls(Box::new(tls.into())))
        }
        b'N' if sslmode == SslMode::Require => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "the server does not support SSL, but sslmode=require",
        )),
        b'N' => Ok(Stream::Plain(tcp)),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the server answered the SSLRequest with {:?}, not S or N: is the upstream a PostgreSQL server?",
                char::from(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_multi_host_urls() {
        let u = UpstreamUrl::parse("postgresql://alice@db:5433/app").expect("parse");
        assert_eq!((u.user.as_str(), u.dbname.as_str()), ("alice", "app"));
        assert_eq!(u.hosts, vec![("db".to_string(), 5433)]);
        assert!(!u.read_write);
        let m = UpstreamUrl::parse("postgresql://bob@a:1,b:2/x?target_session_attrs=read-write")
            .expect("parse");
        assert_eq!(m.hosts.len(), 2);
        assert!(m.read_write);
        assert!(UpstreamUrl::parse("mysql://x").is_err());
        assert!(UpstreamUrl::parse("postgresql://u@h:notaport/db").is_err());
    }

    #[test]
    fn unix_socket_directories_and_host_port_parameters() {
        let u = UpstreamUrl::parse("postgresql://wb@/app?host=/var/run/postgresql&port=5491")
            .expect("parse");
        assert_eq!(u.hosts, vec![("/var/run/postgresql".to_string(), 5491)]);
        assert_eq!(
            endpoint(&u.hosts[0].0, u.hosts[0].1),
            "/var/run/postgresql/.s.PGSQL.5491"
        );
        let e = UpstreamUrl::parse("postgresql://wb@%2Ftmp%2Fpg%2F:5433/app").expect("parse");
        assert_eq!(
            endpoint(&e.hosts[0].0, e.hosts[0].1),
            "/tmp/pg/.s.PGSQL.5433"
        );
        let m = UpstreamUrl::parse("postgresql://wb@x/app?host=a,b&port=1,2").expect("parse");
        assert_eq!(m.hosts, vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        assert_eq!(endpoint("a", 1), "a:1");
        let v6 = UpstreamUrl::parse("postgresql://wb@[::1]/app").expect("parse");
        assert_eq!(v6.hosts, vec![("::1".to_string(), 5432)]);
        let p = UpstreamUrl::parse("postgresql://wb@:5491/app?host=/tmp").expect("parse");
        assert_eq!(
            p.hosts,
            vec![("/tmp".to_string(), 5491)],
            "the authority's port"
        );
        assert!(UpstreamUrl::parse("postgresql://wb@/app").is_err());
        assert!(UpstreamUrl::parse("postgresql://wb@:5491/app").is_err());
        assert!(UpstreamUrl::parse("postgresql://wb@a,/app").is_err());
        assert!(UpstreamUrl::parse("postgresql://wb@/app?host=a,b&port=1,2,3").is_err());
        assert!(UpstreamUrl::parse("postgresql://wb@/app?host=/s&port=x").is_err());
        assert!(UpstreamUrl::parse("postgresql://wb@/app?host=/s,db&sslmode=require").is_err());
        assert!(UpstreamUrl::parse("postgresql://wb@/app?host=/s&sslmode=require").is_ok());
    }

    #[test]
    fn a_password_is_used_and_never_shown() {
        let u = UpstreamUrl::parse("postgresql://wb:s%40cret@db:5432/app").expect("parse");
        assert_eq!(u.user, "wb");
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.text, "postgresql://wb:***@db:5432/app");
        assert!(!format!("{:?}", u.pg_config("app", Duration::from_secs(1))).contains("s@cret"));
        let plain = UpstreamUrl::parse("postgresql://wb@db/app").expect("parse");
        assert_eq!(
            (plain.password, plain.text.as_str()),
            (None, "postgresql://wb@db/app")
        );
    }
}
