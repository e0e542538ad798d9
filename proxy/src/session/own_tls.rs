//! TLS for the proxy's own connections (catalog, notifications, shipping, primary checks):
//! tokio-postgres's `MakeTlsConnect` over the same rustls connector client sessions use, so
//! they follow the upstream URL's `sslmode` too.

use super::tls::{connector, TlsError};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Makes TLS connections for tokio-postgres; whether they are used is the connection's
/// `ssl_mode` (set from the upstream URL's `sslmode`).
#[derive(Clone)]
pub struct OwnTls(Result<TlsConnector, String>);

impl OwnTls {
    /// The connector (built once per process). If rustls cannot be set up, connections that
    /// want TLS fail with the reason.
    pub fn new() -> Self {
        static CONNECTOR: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
        Self(
            CONNECTOR
                .get_or_init(|| connector().map_err(|e: TlsError| e.to_string()))
                .clone(),
        )
    }
}

impl Default for OwnTls {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> MakeTlsConnect<S> for OwnTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = OwnTlsStream<S>;
    type TlsConnect = OwnTlsConnect;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<OwnTlsConnect, std::io::Error> {
        let connector = self.0.clone().map_err(std::io::Error::other)?;
        // No name for a Unix-domain socket (a multi-host list that mixes them with TCP hosts
        // asks for TLS on every host); the certificate is not verified by name anyway.
        let domain = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(OwnTlsConnect(connector, name))
    }
}

/// One TLS handshake toward `ServerName`.
pub struct OwnTlsConnect(TlsConnector, ServerName<'static>);

impl<S> TlsConnect<S> for OwnTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = OwnTlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<OwnTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let OwnTlsConnect(connector, name) = self;
        Box::pin(async move { connector.connect(name, stream).await.map(OwnTlsStream) })
    }
}

/// An encrypted connection; SCRAM channel binding is not offered (as for client sessions).
pub struct OwnTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for OwnTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for OwnTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for OwnTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
