//! What PostgreSQL owes a session for the messages sent upstream: the ReadyForQuery replies
//! (one per Sync, Query and FunctionCall it will answer), and per group up to its Sync, Query
//! or FunctionCall, which Parses it completed and whether an error made it skip the rest.
//!
//! PostgreSQL answers an error in an extended-protocol message (Parse, Bind, Describe,
//! Execute, Close) by skipping every message up to the next Sync, Queries and FunctionCalls
//! included: those get no reply at all. The ledger counts the completions of a group's
//! extended-protocol messages, so an ErrorResponse that arrives while some are outstanding is
//! known to come from one of them (PostgreSQL answers in order), and the Queries and
//! FunctionCalls sent before the next Sync stop being owed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A Parse message sent upstream, as the write-behind hook knows it: the serial of the
/// statement it creates (0: none the hook follows) and whether the proxy sent it on its own
/// (materializing a statement it had answered locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseRef {
    pub serial: u64,
    pub injected: bool,
}

/// The messages sent upstream between two ReadyForQuery replies.
#[derive(Debug, Default)]
struct Group {
    /// Its Parses, in order.
    parses: Vec<ParseRef>,
    /// Extended-protocol messages whose completion (or error) has not arrived.
    pending: usize,
    /// What ends it: `S`, `Q` or `F` (0 while it is being sent).
    end: u8,
}

/// What a reply tells.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// It is the ParseComplete of a Parse the proxy sent on its own (the client must not see
    /// it).
    pub own_parse: bool,
    /// ReadyForQuery replies counted as owed that will not come after all (Queries and
    /// FunctionCalls PostgreSQL skips after this error).
    pub skipped: usize,
}

/// The groups sent upstream until their ReadyForQuery. A ParseComplete answers each
/// successful Parse in order, and after an error PostgreSQL skips everything up to Sync, so
/// the first `completes` of a group's Parses exist and the rest do not.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The group being sent (no Sync, Query or FunctionCall after it yet).
    open: Group,
    /// Groups sent whose ReadyForQuery has not arrived, oldest first.
    sent: VecDeque<Group>,
    /// ParseCompletes received for the oldest group.
    completes: usize,
    /// Parses PostgreSQL did not complete, for the hook to take.
    failed: Vec<ParseRef>,
    /// PostgreSQL raised an error in the group being sent and skips it up to its Sync.
    skipping: bool,
}

impl Ledger {
    /// A Parse is being sent (before it is noted).
    pub fn push_parse(&mut self, r: ParseRef) {
        self.open.parses.push(r);
    }

    /// Whether PostgreSQL skips what is sent now, up to a Sync, after an error in an
    /// extended-protocol message: it owes no reply until the Sync is sent.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Whether replies of type `ty` tell the ledger anything: completions (see
    /// [`completes`]), ErrorResponse and ReadyForQuery. Other replies need not be noted.
    pub fn follows(ty: u8) -> bool {
        completes(ty) || matches!(ty, b'E' | b'Z')
    }

    /// The group PostgreSQL is answering now.
    fn head(&mut self) -> &mut Group {
        match self.sent.front_mut() {
            Some(g) => g,
            None => &mut self.open,
        }
    }

    /// A message of type `ty` is sent; returns whether PostgreSQL will answer it with a
    /// ReadyForQuery. Not for Syncs ignored during COPY FROM STDIN (see [`ReplyCounter`]).
    fn on_sent(&mut self, ty: u8) -> bool {
        match ty {
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if !self.skipping {
                    self.open.pending += 1;
                }
                false
            }
            b'S' => {
                self.skipping = false;
                self.close(b'S');
                true
            }
            // Skipped: no reply, and the group goes on.
            b'Q' | b'F' if self.skipping => false,
            b'Q' | b'F' => {
                self.close(ty);
                true
            }
            _ => false,
        }
    }

    fn close(&mut self, end: u8) {
        let mut group = std::mem::take(&mut self.open);
        group.end = end;
        self.sent.push_back(group);
    }

    /// The last `n` groups' Syncs were ignored (COPY FROM STDIN in the extended protocol):
    /// their messages belong to the group the next counted Sync ends.
    fn reopen(&mut self, n: usize) {
        for _ in 0..n {
            if let Some(mut group) = self.sent.pop_back() {
                group.parses.append(&mut self.open.parses);
                group.pending += self.open.pending;
                group.end = 0;
                self.open = group;
            }
        }
    }

    /// A reply of type `ty` arrived (in reply order, before it is relayed); `fatal` for an
    /// ErrorResponse that ends the session.
    pub fn on_reply(&mut self, ty: u8, fatal: bool) -> Reply {
        let mut reply = Reply::default();
        match ty {
            _ if completes(ty) => {
                if ty == b'1' {
                    reply.own_parse = self.on_parse_complete();
                }
                let head = self.head();
                head.pending = head.pending.saturating_sub(1);
            }
            b'E' if !fatal => reply.skipped = self.on_error(),
            b'Z' => self.on_ready(),
            _ => {}
        }
        reply
    }

    /// An ErrorResponse: if it answers an extended-protocol message, PostgreSQL skips every
    /// message up to the next Sync. Returns the ReadyForQuery replies no longer owed.
    fn on_error(&mut self) -> usize {
        if self.head().pending == 0 {
            return 0; // the error of a Query, FunctionCall or Sync: its ReadyForQuery follows
        }
        let Some(mut merged) = self.sent.pop_front() else {
            self.open.pending = 0;
            self.skipping = true;
            return 0;
        };
        let mut skipped = 0;
        while merged.end != b'S' {
            skipped += 1;
            match self.sent.pop_front() {
                Some(mut next) => {
                    merged.parses.append(&mut next.parses);
                    merged.end = next.end;
                }
                None => {
                    // No Sync sent yet: the skip goes on into the group being sent.
                    merged.parses.append(&mut self.open.parses);
                    merged.end = 0;
                    self.open = merged;
                    self.open.pending = 0;
                    self.skipping = true;
                    return skipped;
                }
            }
        }
        merged.pending = 0;
        self.sent.push_front(merged);
        skipped
    }

    /// A ParseComplete arrived; returns whether it answers a Parse the proxy sent on its own
    /// (the client must not see it). It answers the oldest group's next Parse (the group
    /// still being sent, when every earlier one is answered).
    fn on_parse_complete(&mut self) -> bool {
        let at = self.completes;
        self.completes += 1;
        let group = self.sent.front().unwrap_or(&self.open);
        group.parses.get(at).is_some_and(|r| r.injected)
    }

    /// A ReadyForQuery arrived: the oldest group is answered. Called in reply order (a
    /// ParseComplete of the next group may follow in the same read).
    fn on_ready(&mut self) {
        if let Some(group) = self.sent.pop_front() {
            let followed = group.parses.into_iter().skip(self.completes);
            self.failed.extend(followed.filter(|r| r.serial != 0));
        }
        self.completes = 0;
    }

    /// The Parses found not completed since the last call.
    pub fn take_failed(&mut self) -> Vec<ParseRef> {
        std::mem::take(&mut self.failed)
    }
}

/// Whether a reply of type `ty` is the last one an extended-protocol message gets when it
/// succeeds: ParseComplete, BindComplete, CloseComplete, NoData or RowDescription (Describe),
/// and CommandComplete, EmptyQueryResponse or PortalSuspended (Execute). A Query's
/// RowDescription and CommandComplete come once its group's are all in.
fn completes(ty: u8) -> bool {
    matches!(ty, b'1' | b'2' | b'3' | b'n' | b'T' | b'C' | b'I' | b's')
}

/// Counts the ReadyForQuery replies owed for client messages as they are sent: one per Sync,
/// Query and FunctionCall, except Syncs PostgreSQL ignores during COPY FROM STDIN in the
/// extended protocol (drivers send Bind/Execute/Sync before the copy data) and what it skips
/// after an error (see [`Ledger`]).
#[derive(Debug, Default)]
pub struct ReplyCounter {
    syncs_since_execute: usize,
    in_copy: bool,
    /// The last COPY FROM STDIN began after a Sync PostgreSQL ignored (an extended-protocol
    /// COPY): when it ends, its implicit transaction stays open until the client's next Sync.
    sync_ignored: bool,
}

impl ReplyCounter {
    /// Whether the last COPY FROM STDIN began after a Sync that PostgreSQL ignored: after its
    /// CopyDone or CopyFail, PostgreSQL still owes the COPY's outcome and waits for a Sync.
    pub fn copy_ignored_sync(&self) -> bool {
        self.sync_ignored
    }

    /// Notes one client message of type `ty` going upstream.
    pub fn note(&mut self, ty: u8, owed: &AtomicUsize, ledger: &mut Ledger) {
        match ty {
            b'S' if self.in_copy => return,
            b'S' => self.syncs_since_execute += 1,
            b'Q' | b'F' => self.syncs_since_execute = 0,
            b'E' => self.syncs_since_execute = 0,
            b'd' | b'c' | b'f' => {
                if !self.in_copy {
                    // The Syncs sent since the Execute that started the COPY were ignored.
                    let ignored = std::mem::take(&mut self.syncs_since_execute);
                    self.sync_ignored = ignored > 0;
                    let _ = owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(ignored))
                    });
                    ledger.reopen(ignored);
                    self.in_copy = true;
                }
                if ty != b'd' {
                    self.in_copy = false;
                }
                return;
            }
            _ => {}
        }
        if ledger.on_sent(ty) {
            owed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (ReplyCounter, Ledger, AtomicUsize) {
        (
            ReplyCounter::default(),
            Ledger::default(),
            AtomicUsize::new(0),
        )
    }

    /// Sends `types` through a counter.
    fn send(counter: &mut ReplyCounter, ledger: &mut Ledger, owed: &AtomicUsize, types: &[u8]) {
        for &t in types {
            counter.note(t, owed, ledger);
        }
    }

    /// Receives `types` (ErrorResponses not fatal); returns the replies owed afterwards.
    fn receive(ledger: &mut Ledger, owed: &AtomicUsize, types: &[u8]) -> usize {
        for &t in types {
            owed.fetch_sub(ledger.on_reply(t, false).skipped, Ordering::AcqRel);
            if t == b'Z' {
                owed.fetch_sub(1, Ordering::AcqRel);
            }
        }
        owed.load(Ordering::Acquire)
    }

    #[test]
    fn a_query_after_an_extended_error_is_skipped_up_to_the_sync() {
        let (mut c, mut l, owed) = fresh();
        send(&mut c, &mut l, &owed, b"PQ");
        assert_eq!(owed.load(Ordering::Acquire), 1);
        // The Parse fails: the Query is skipped, nothing is owed until a Sync.
        assert_eq!(receive(&mut l, &owed, b"E"), 0);
        assert!(l.skipping());
        // Sent while skipping: not answered either.
        send(&mut c, &mut l, &owed, b"PBEQ");
        assert_eq!(owed.load(Ordering::Acquire), 0);
        send(&mut c, &mut l, &owed, b"S");
        assert!(!l.skipping());
        assert_eq!(receive(&mut l, &owed, b"Z"), 0);
        // Normal again.
        send(&mut c, &mut l, &owed, b"Q");
        assert_eq!(receive(&mut l, &owed, b"TDCZ"), 0);
    }

    #[test]
    fn queries_sent_before_the_error_arrives_stop_being_owed() {
        let (mut c, mut l, owed) = fresh();
        // Bind fails; the Query, the FunctionCall and the second group's Parse are skipped.
        send(&mut c, &mut l, &owed, b"PBEQFPS");
        assert_eq!(owed.load(Ordering::Acquire), 3);
        assert_eq!(receive(&mut l, &owed, b"1E"), 1);
        assert!(!l.skipping());
        assert_eq!(receive(&mut l, &owed, b"Z"), 0);
    }

    #[test]
    fn errors_of_queries_and_syncs_skip_nothing() {
        let (mut c, mut l, owed) = fresh();
        // Every extended message completed: the error is the Query's own.
        send(&mut c, &mut l, &owed, b"PBDEQPBES");
        assert_eq!(receive(&mut l, &owed, b"12nC"), 2);
        assert_eq!(receive(&mut l, &owed, b"EZ"), 1);
        assert_eq!(receive(&mut l, &owed, b"12CZ"), 0);
        // A Describe of a statement: ParameterDescription, then NoData.
        send(&mut c, &mut l, &owed, b"PDQ");
        assert_eq!(receive(&mut l, &owed, b"1tnEZ"), 0);
        assert!(!l.skipping());
        // A commit that fails at Sync.
        send(&mut c, &mut l, &owed, b"PBES");
        assert_eq!(receive(&mut l, &owed, b"12CEZ"), 0);
    }

    #[test]
    fn parses_skipped_after_an_error_are_reported_failed() {
        let (mut c, mut l, owed) = fresh();
        let r = |serial| ParseRef {
            serial,
            injected: false,
        };
        l.push_parse(r(1));
        c.note(b'P', &owed, &mut l);
        c.note(b'Q', &owed, &mut l);
        l.push_parse(r(2));
        c.note(b'P', &owed, &mut l);
        c.note(b'S', &owed, &mut l);
        // Parse 1 completes, the Query fails on its own, Parse 2 completes.
        assert_eq!(receive(&mut l, &owed, b"1EZ1Z"), 0);
        assert!(l.take_failed().is_empty());
        // Parse 3 fails: Parse 4, after a skipped Query, never runs.
        for serial in [3, 4] {
            l.push_parse(r(serial));
            c.note(b'P', &owed, &mut l);
            c.note(b'Q', &owed, &mut l);
        }
        c.note(b'S', &owed, &mut l);
        assert_eq!(receive(&mut l, &owed, b"EZ"), 0);
        assert_eq!(l.take_failed(), vec![r(3), r(4)]);
    }

    #[test]
    fn syncs_ignored_during_copy_are_not_owed() {
        let (mut c, mut l, owed) = fresh();
        send(&mut c, &mut l, &owed, b"PBES");
        assert_eq!(owed.load(Ordering::Acquire), 1);
        assert_eq!(receive(&mut l, &owed, b"12G"), 1);
        // The Sync was ignored by the COPY: the one after CopyDone is owed.
        send(&mut c, &mut l, &owed, b"dcS");
        assert_eq!(owed.load(Ordering::Acquire), 1);
        assert_eq!(receive(&mut l, &owed, b"CZ"), 0);
    }

    /// PostgreSQL's side, as `postgres.c` processes messages: the replies each client message
    /// gets, given which of them fail. Extended-protocol errors skip to the next Sync.
    fn server_replies(types: &[u8], fails: &[bool]) -> Vec<Vec<u8>> {
        let mut skipping = false;
        let mut out = Vec::new();
        for (&t, &fail) in types.iter().zip(fails) {
            let mut r = Vec::new();
            if skipping && t != b'S' {
                out.push(r);
                continue;
            }
            match t {
                b'P' | b'B' | b'D' | b'E' | b'C' if fail => {
                    if t == b'E' {
                        r.push(b'D'); // a row before the error
                    }
                    r.push(b'E');
                    skipping = true;
                }
                b'P' => r.push(b'1'),
                b'B' => r.push(b'2'),
                b'D' => r.extend_from_slice(b"tn"),
                b'E' => r.extend_from_slice(b"DDC"),
                b'C' => r.push(b'3'),
                b'S' => {
                    skipping = false;
                    if fail {
                        r.push(b'E'); // the commit failed
                    }
                    r.push(b'Z');
                }
                b'Q' if fail => r.extend_from_slice(b"EZ"),
                b'Q' => r.extend_from_slice(b"TDCZ"),
                b'F' if fail => r.extend_from_slice(b"EZ"),
                b'F' => r.extend_from_slice(b"VZ"),
                _ => {} // Flush
            }
            out.push(r);
        }
        out
    }

    /// Random message streams, random failures, random interleavings of sending and reading:
    /// the ledger never counts fewer ReadyForQuery replies than PostgreSQL will send, and once
    /// every reply is in it owes nothing and knows whether PostgreSQL is skipping.
    #[test]
    fn the_ledger_follows_postgres_on_random_streams() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(20261201);
        for _ in 0..20_000 {
            let len = rng.random_range(1..16);
            let types: Vec<u8> = (0..len)
                .map(|_| b"PBDECHSQF"[rng.random_range(0..9)])
                .collect();
            let fails: Vec<bool> = (0..len).map(|_| rng.random_ratio(1, 6)).collect();
            let replies = server_replies(&types, &fails);
            let (mut c, mut l, owed) = fresh();
            // Replies in flight: (message index, reply type), in order.
            let mut flight: VecDeque<(usize, u8)> = VecDeque::new();
            let mut sent = 0;
            loop {
                let read = !flight.is_empty() && (sent == len || rng.random_bool(0.5));
                if read {
                    if let Some((_, ty)) = flight.pop_front() {
                        owed.fetch_sub(l.on_reply(ty, false).skipped, Ordering::AcqRel);
                        if ty == b'Z' {
                            owed.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                } else if sent < len {
                    c.note(types[sent], &owed, &mut l);
                    flight.extend(replies[sent].iter().map(|&r| (sent, r)));
                    sent += 1;
                } else {
                    break;
                }
                let to_come = flight.iter().filter(|(_, r)| *r == b'Z').count();
                assert!(
                    owed.load(Ordering::Acquire) >= to_come,
                    "owed fewer than PostgreSQL sends: {:?} {fails:?}",
                    String::from_utf8_lossy(&types)
                );
            }
            let server_skipping = {
                let last_sync = types.iter().rposition(|&t| t == b'S');
                let after = last_sync.map_or(0, |i| i + 1);
                (after..len).any(|i| {
                    fails[i]
                        && matches!(types[i], b'P' | b'B' | b'D' | b'E' | b'C')
                        && !replies[i].is_empty()
                })
            };
            assert_eq!(
                (owed.load(Ordering::Acquire), l.skipping()),
                (0, server_skipping),
                "{:?} {fails:?}",
                String::from_utf8_lossy(&types)
            );
        }
    }
}
