//! Wire-protocol helpers: framing of the byte streams, the startup packet, and building the
//! backend messages the proxy itself sends (with pgwire's message codecs).

pub mod frame;
pub mod frontend;
pub mod messages;
pub mod startup;

/// Appends message `m`, encoded with pgwire's codec (a message of the proxy's own, to a client
/// or to PostgreSQL).
pub(crate) fn put<M: pgwire::messages::Message>(buf: &mut bytes::BytesMut, m: &M) {
    // Encoding into a BytesMut only fails for messages over pgwire's size limits, which the
    // proxy's own small messages never reach.
    if let Err(error) = m.encode(buf) {
        tracing::error!(%error, "encoding a message of the proxy's own failed");
    }
}

/// A message of type `ty` with `body`, framed as on the wire (type, length, body): for the
/// unit tests of the codecs.
#[cfg(test)]
pub(crate) fn framed(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}
