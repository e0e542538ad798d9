//! PgBouncer's operator signals: SIGHUP reloads the configuration (as the admin console's
//! `RELOAD`), SIGUSR1 pauses shipping and SIGUSR2 resumes it (`PAUSE`, `RESUME`). SIGTERM and
//! SIGINT, which drain and exit, are handled by `main`.

use crate::session::Shared;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Makes SIGHUP, SIGUSR1 and SIGUSR2 harmless from now on (their default action ends the
/// process); [`serve`] acts on them once the proxy runs.
pub fn ignore_until_served() {
    for kind in [
        SignalKind::hangup(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        // Tokio never uninstalls a handler: dropping the stream keeps the signal caught.
        if let Err(error) = signal(kind) {
            warn!(%error, "cannot catch an operator signal");
        }
    }
}

/// Acts on the operator signals for as long as the proxy runs.
pub async fn serve(shared: Arc<Shared>) {
    let (Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        warn!("cannot catch SIGHUP, SIGUSR1 or SIGUSR2");
        return;
    };
    let wb = shared.writebehind.as_deref();
    loop {
        tokio::select! {
            Some(()) = hup.recv() => {
                let mut out = BytesMut::new();
                crate::admin::reload(wb, &shared, &mut out);
                if out.first() == Some(&b'E') {
                    warn!("SIGHUP: the configuration is not valid; nothing changed");
                } else {
                    info!("SIGHUP: configuration reloaded");
                }
            }
            Some(()) = usr1.recv() => {
                if let Some(wb) = wb {
                    wb.set_paused(true);
                }
                info!("SIGUSR1: shipping paused");
            }
            Some(()) = usr2.recv() => {
                if let Some(wb) = wb {
                    wb.set_paused(false);
                }
                info!("SIGUSR2: shipping resumed");
            }
            else => return,
        }
    }
}
