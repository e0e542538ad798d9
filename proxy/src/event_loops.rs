//! Event loops for sessions: threads of their own, each a current-thread runtime with its own
//! I/O driver; a session runs on the loop it was given at accept for its whole life, so its
//! client and server sockets are polled by one thread and a reply never wakes another.

use std::sync::mpsc;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Extra event-loop threads beside the accepting one, handed out in turn.
pub struct EventLoops {
    handles: Vec<Handle>,
    /// Dropped to end the threads' loops (their runtimes, and any task left, go with them).
    stops: Vec<oneshot::Sender<()>>,
    next: usize,
}

impl EventLoops {
    /// Starts `n` event-loop threads named `wb-loop-1` ….
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 1..=n {
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let (handle_tx, handle_rx) = mpsc::sync_channel::<std::io::Result<Handle>>(1);
            std::thread::Builder::new()
                .name(format!("wb-loop-{i}"))
                .spawn(move || {
                    let runtime = match Builder::new_current_thread().enable_all().build() {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async move {
                        let _ = stop_rx.await;
                    });
                })?;
            let handle = handle_rx.recv().map_err(|_| {
                std::io::Error::other(format!("event loop {i} ended before it started"))
            })??;
            handles.push(handle);
            stops.push(stop_tx);
        }
        Ok(Self {
            handles,
            stops,
            next: 0,
        })
    }

    /// The loop the next session goes to: the accepting thread's own (`None`) or one of the
    /// extra loops, in turn.
    pub fn take_turn(&mut self) -> Option<&Handle> {
        let slot = self.next;
        self.next = (self.next + 1) % (self.handles.len() + 1);
        slot.checked_sub(1).and_then(|i| self.handles.get(i))
    }

    /// How many loops sessions run on, the accepting thread's included.
    pub fn count(&self) -> usize {
        self.handles.len() + 1
    }
}

impl Drop for EventLoops {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the thread a task spawned on `handle` runs on.
    fn thread_of(handle: &Handle) -> Option<String> {
        futures::executor::block_on(
            handle.spawn(async { std::thread::current().name().map(str::to_string) }),
        )
        .expect("the task ran")
    }

    #[test]
    fn sessions_are_handed_out_in_turn_starting_with_the_accepting_loop() {
        let mut loops = EventLoops::start(2).expect("threads start");
        let picks: Vec<Option<String>> = (0..6)
            .map(|_| {
                loops
                    .take_turn()
                    .cloned()
                    .map(|h| thread_of(&h).unwrap_or_default())
            })
            .collect();
        let expected = [None, Some("wb-loop-1"), Some("wb-loop-2")];
        let expected: Vec<Option<String>> = expected
            .iter()
            .chain(expected.iter())
            .map(|n| n.map(str::to_string))
            .collect();
        assert_eq!(picks, expected);
    }

    #[test]
    fn dropping_the_loops_ends_their_threads_tasks() {
        let mut loops = EventLoops::start(1).expect("threads start");
        let _ = loops.take_turn();
        let handle = loops.take_turn().expect("one extra loop").clone();
        let pending = handle.spawn(std::future::pending::<()>());
        drop(loops);
        let ended = futures::executor::block_on(pending);
        assert!(ended.is_err_and(|e| e.is_cancelled()));
    }
}
