//! The Unix-domain socket local clients may use besides the TCP address (`unix_socket_dir`):
//! `DIR/.s.PGSQL.<port>` as PostgreSQL and PgBouncer name theirs, bound over a stale file a
//! killed proxy left, refused while a live process answers on it, removed at exit.

use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// A bound socket; its file is removed when this is dropped.
pub struct LocalSocket {
    pub listener: UnixListener,
    path: PathBuf,
}

impl LocalSocket {
    /// Binds `dir/.s.PGSQL.port`, readable and writable by every local user (PostgreSQL's
    /// default `unix_socket_permissions`; PostgreSQL still authenticates every client).
    pub async fn bind(dir: &Path, port: u16) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!(".s.PGSQL.{port}"));
        if std::fs::symlink_metadata(&path).is_ok() {
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("another process listens on {}", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", path.display()),
            )
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        Ok(Self { listener, path })
    }

    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_file_is_replaced_a_live_socket_refused_and_the_file_removed_at_drop() {
        let dir = std::env::temp_dir().join(format!("wb-local-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        // A socket file nobody listens on any more, as a killed proxy leaves it.
        drop(std::os::unix::net::UnixListener::bind(dir.join(".s.PGSQL.7")).expect("bind"));
        assert!(dir.join(".s.PGSQL.7").exists());
        let first = LocalSocket::bind(&dir, 7)
            .await
            .expect("stale file replaced");
        let refused = LocalSocket::bind(&dir, 7).await.err().expect("in use");
        assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse, "{refused}");
        assert!(first.path().exists(), "the live one keeps its file");
        drop(first);
        assert!(!dir.join(".s.PGSQL.7").exists(), "removed at drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
