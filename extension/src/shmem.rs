//! Shared memory: one slot per apply worker (pid, database, latch, state, counters, last error).

use pgrx::lwlock::PgLwLock;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::*;

/// The most apply workers (databases) one server runs.
pub const MAX_WORKERS: usize = 32;
const ERROR_LEN: usize = 200;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// The slot is free.
    Free = 0,
    /// Waiting for a wake-up or the naptime.
    Idle = 1,
    /// Applying the inbox.
    Applying = 2,
    /// The extension is not installed in the worker's database; rechecking every naptime.
    NoExtension = 3,
}

impl WorkerState {
    /// The name shown in `writebehind.workers.state`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Free => "free",
            WorkerState::Idle => "idle",
            WorkerState::Applying => "applying",
            WorkerState::NoExtension => "waiting for CREATE EXTENSION",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => WorkerState::Idle,
            2 => WorkerState::Applying,
            3 => WorkerState::NoExtension,
            _ => WorkerState::Free,
        }
    }
}

/// One worker's slot.
#[derive(Clone, Copy)]
pub struct WorkerSlot {
    pub pid: i32,
    pub database: pg_sys::Oid,
    /// Address of the worker's process latch (in shared memory, valid in every backend).
    latch: usize,
    state: u8,
    pub rounds: i64,
    pub applied: i64,
    pub errors: i64,
    pub last_round_at: i64,
    error_len: u16,
    error: [u8; ERROR_LEN],
}

impl Default for WorkerSlot {
    fn default() -> Self {
        Self {
            pid: 0,
            database: pg_sys::InvalidOid,
            latch: 0,
            state: 0,
            rounds: 0,
            applied: 0,
            errors: 0,
            last_round_at: 0,
            error_len: 0,
            error: [0; ERROR_LEN],
        }
    }
}

impl WorkerSlot {
    /// The worker's state.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state)
    }

    /// The last error the worker met, if any.
    pub fn last_error(&self) -> Option<String> {
        (self.error_len > 0)
            .then(|| String::from_utf8_lossy(&self.error[..self.error_len as usize]).into_owned())
    }
}

/// All slots.
#[derive(Clone, Copy)]
pub struct Slots {
    pub slots: [WorkerSlot; MAX_WORKERS],
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            slots: [WorkerSlot::default(); MAX_WORKERS],
        }
    }
}

// SAFETY: `Slots` is plain `Copy` data without pointers into process-local memory (the latch
// address points into shared memory), so it may live in shared memory.
unsafe impl PGRXSharedMemory for Slots {}

// SAFETY: the name is unique to this extension.
pub static WORKERS: PgLwLock<Slots> = unsafe { PgLwLock::new(c"pg_writebehind_workers") };

/// Requests and initialises the shared memory; called from `_PG_init`.
pub fn init() {
    pg_shmem_init!(WORKERS);
}

/// Claims a slot for the calling worker; returns its index.
pub fn claim(database: pg_sys::Oid) -> Option<usize> {
    let mut slots = WORKERS.exclusive();
    // SAFETY: MyProcPid and MyLatch are set for every backend and bgworker by this point.
    let (pid, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch as usize) };
    let idx = slots.slots.iter().position(|s| s.pid == pid).or_else(|| {
        slots
            .slots
            .iter()
            .position(|s| s.state() == WorkerState::Free)
    })?;
    let slot = &mut slots.slots[idx];
    *slot = WorkerSlot {
        pid,
        database,
        latch,
        state: WorkerState::Idle as u8,
        ..WorkerSlot::default()
    };
    Some(idx)
}

/// Frees a slot when its worker exits.
pub fn release(idx: usize) {
    let mut slots = WORKERS.exclusive();
    if let Some(s) = slots.slots.get_mut(idx) {
        *s = WorkerSlot::default();
    }
}

/// Updates a worker's state.
pub fn set_state(idx: usize, state: WorkerState) {
    let mut slots = WORKERS.exclusive();
    if let Some(s) = slots.slots.get_mut(idx) {
        s.state = state as u8;
    }
}

/// Records a finished round.
pub fn round_done(idx: usize, applied: i64) {
    let mut slots = WORKERS.exclusive();
    if let Some(s) = slots.slots.get_mut(idx) {
        s.rounds += 1;
        s.applied += applied;
        // SAFETY: GetCurrentTimestamp has no preconditions.
        s.last_round_at = unsafe { pg_sys::GetCurrentTimestamp() };
    }
}

/// Records an error (truncated to the slot's size).
pub fn record_error(idx: usize, message: &str) {
    let mut slots = WORKERS.exclusive();
    if let Some(s) = slots.slots.get_mut(idx) {
        s.errors += 1;
        let mut n = message.len().min(ERROR_LEN);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        s.error[..n].copy_from_slice(&message.as_bytes()[..n]);
        s.error_len = n as u16;
    }
}

/// Wakes every worker serving `database`.
pub fn wake(database: pg_sys::Oid) {
    let latches: Vec<usize> = WORKERS
        .share()
        .slots
        .iter()
        .filter(|s| s.state() != WorkerState::Free && s.database == database && s.latch != 0)
        .map(|s| s.latch)
        .collect();
    for latch in latches {
        // SAFETY: the address is a PGPROC's process latch in shared memory, which stays valid
        // for the life of the server; setting a latch of an exited process is harmless.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// A copy of every slot in use.
pub fn snapshot() -> Vec<WorkerSlot> {
    WORKERS
        .share()
        .slots
        .iter()
        .filter(|s| s.state() != WorkerState::Free)
        .copied()
        .collect()
}
