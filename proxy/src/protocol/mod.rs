//! Wire-protocol helpers: framing of the byte streams, the startup packet, and building the
//! backend messages the proxy itself sends (with pgwire's message codecs).

pub mod frame;
pub mod frontend;
pub mod messages;
pub mod startup;
