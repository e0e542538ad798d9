//! Unit tests of the WAL: round trips, rotation, removal, torn tails, corruption, the lock.

use super::*;
use std::fs::OpenOptions;
use std::sync::Arc;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wbwal-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn write_n(dir: &Path, n: u64, segment_size: u64) -> Vec<Vec<u8>> {
    let rec = recover(dir).expect("recover");
    let wal = Wal::open(dir, rec.next_lsn, segment_size).expect("open");
    (0..n)
        .map(|i| {
            let p = format!("payload-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes();
            wal.append(1, &p).expect("append");
            p
        })
        .collect()
}

/// The path of the last segment in `dir`.
fn last_segment(dir: &Path) -> PathBuf {
    segment_paths(dir)
        .expect("list")
        .pop()
        .expect("one segment")
        .1
}

/// Cuts (or extends with zeros) the file at `path` to `len` bytes.
fn set_len(path: &Path, len: u64) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.set_len(len).expect("set_len");
}

#[test]
fn appends_survive_reopen_in_order_across_segments() {
    let dir = tempdir("reopen");
    let first = write_n(&dir, 500, 2048);
    let second = write_n(&dir, 10, 2048);
    assert!(
        segment_paths(&dir).expect("list").len() > 3,
        "rotation happened"
    );
    let rec = recover(&dir).expect("recover");
    let payloads: Vec<_> = rec.records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, [first, second].concat());
    assert_eq!(rec.next_lsn, 511);
    assert!(rec
        .records
        .iter()
        .enumerate()
        .all(|(i, r)| r.lsn == i as u64 + 1));
    assert!(rec.cut_tail.is_none());
}

#[test]
fn remove_below_keeps_everything_not_yet_committed() {
    let dir = tempdir("remove");
    write_n(&dir, 300, 1024);
    let wal = Wal::open(&dir, recover(&dir).expect("recover").next_lsn, 1024).expect("open");
    let removed = wal.remove_below(200).expect("remove");
    assert!(removed > 0);
    let rec = recover(&dir).expect("recover after removal");
    let first = rec.records.first().expect("records left").lsn;
    assert!(
        first <= 200,
        "records at or above 200 must remain, first is {first}"
    );
    assert_eq!(rec.records.last().map(|r| r.lsn), Some(300));
}

/// A segment that cannot be removed stays listed (and is tried again), with the ones after it.
#[test]
fn a_segment_that_cannot_be_removed_is_kept_and_tried_again() {
    let dir = tempdir("remove-fails");
    write_n(&dir, 300, 1024);
    let wal = Wal::open(&dir, recover(&dir).expect("recover").next_lsn, 1024).expect("open");
    let before = wal.stats().segments;
    let second = segment_paths(&dir).expect("list")[1].1.clone();
    // remove_file refuses a directory (root ignores permissions, not that).
    std::fs::rename(&second, dir.join("aside")).expect("move aside");
    std::fs::create_dir(&second).expect("a directory in its place");
    assert!(
        wal.remove_below(300).is_err(),
        "the directory cannot be removed"
    );
    assert_eq!(
        wal.stats().segments,
        before - 1,
        "only the segment before it was removed"
    );
    std::fs::remove_dir(&second).expect("rmdir");
    std::fs::rename(dir.join("aside"), &second).expect("move back");
    let removed = wal.remove_below(300).expect("now it goes");
    assert!(removed > 0);
    assert!(
        !second.exists(),
        "the kept segment was removed on the retry"
    );
    assert_eq!(wal.stats().segments, before - 1 - removed);
    let rec = recover(&dir).expect("recover after removal");
    assert_eq!(rec.records.last().map(|r| r.lsn), Some(300));
}

#[test]
fn torn_tail_is_cut_and_appending_resumes() {
    let dir = tempdir("torn");
    let written = write_n(&dir, 50, 1 << 20);
    let seg = last_segment(&dir);
    let len = std::fs::metadata(&seg).expect("meta").len();
    set_len(&seg, len - 5);
    let rec = recover(&dir).expect("torn tail is not an error");
    assert_eq!(rec.records.len(), 49);
    assert!(rec.cut_tail.is_some());
    assert_eq!(
        rec.records
            .iter()
            .map(|r| r.payload.clone())
            .collect::<Vec<_>>(),
        written[..49].to_vec()
    );
    write_n(&dir, 1, 1 << 20);
    let again = recover(&dir).expect("recover again");
    assert_eq!(again.records.len(), 50);
    assert_eq!(again.records[49].lsn, 50);
}

#[test]
fn flipped_byte_in_the_middle_stops_recovery() {
    let dir = tempdir("flip");
    write_n(&dir, 50, 1 << 20);
    let seg = last_segment(&dir);
    let mut data = std::fs::read(&seg).expect("read");
    data[100] ^= 0x01;
    std::fs::write(&seg, &data).expect("write");
    let err = recover(&dir).expect_err("corruption must be refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[test]
fn flipped_byte_in_the_last_record_is_a_torn_tail() {
    let dir = tempdir("fliplast");
    write_n(&dir, 20, 1 << 20);
    let seg = last_segment(&dir);
    let mut data = std::fs::read(&seg).expect("read");
    let n = data.len();
    data[n - 2] ^= 0x01;
    std::fs::write(&seg, &data).expect("write");
    let rec = recover(&dir).expect("a damaged last record is cut");
    assert_eq!(rec.records.len(), 19);
}

#[test]
fn directory_lock_is_exclusive_and_proxy_id_persists() {
    let dir = tempdir("lock");
    let a = WalDir::open(&dir, None).expect("first open");
    let id = a.proxy_id().to_string();
    assert!(matches!(WalDir::open(&dir, None), Err(WalError::Locked(_))));
    drop(a);
    let b = WalDir::open(&dir, None).expect("reopen after release");
    assert_eq!(b.proxy_id(), id);
    drop(b);
    assert!(matches!(
        WalDir::open(&dir, Some("other")),
        Err(WalError::ProxyIdMismatch { .. })
    ));
}

#[tokio::test]
async fn fsync_mode_waits_for_group_sync() {
    let dir = tempdir("fsync");
    let wal = Arc::new(Wal::open(&dir, 1, 1 << 20).expect("open"));
    tokio::spawn(wal.clone().run_fsync(std::time::Duration::from_millis(5)));
    let lsn = wal.append(1, b"x").expect("append");
    tokio::time::timeout(std::time::Duration::from_secs(5), wal.wait_synced(lsn))
        .await
        .expect("synced in time")
        .expect("fsync succeeded");
    assert!(wal.stats().synced_lsn >= lsn);
}

#[test]
fn a_killed_writer_leaves_zeros_that_recovery_trims() {
    let dir = tempdir("zeros");
    let written = write_n(&dir, 30, 1 << 20);
    let seg = last_segment(&dir);
    // What a killed writer leaves: its records, then the zeros reserved ahead.
    let len = std::fs::metadata(&seg).expect("meta").len();
    set_len(&seg, len + 70_000);
    let rec = recover(&dir).expect("zeros are the end of the log, not damage");
    assert!(rec.cut_tail.is_none(), "zeros are not a torn tail");
    assert_eq!(rec.records.len(), 30);
    assert_eq!(rec.records[29].payload, written[29]);
    assert_eq!(std::fs::metadata(&seg).expect("meta").len(), len, "trimmed");
    write_n(&dir, 1, 1 << 20);
    assert_eq!(recover(&dir).expect("again").records.len(), 31);
}

#[test]
fn records_of_a_writer_that_never_closed_are_recovered() {
    let dir = tempdir("forgotten");
    let wal = Wal::open(&dir, 1, 1 << 20).expect("open");
    for i in 0..100u64 {
        wal.append(1, format!("r{i}").as_bytes()).expect("append");
    }
    // As if killed: no trim, the mapping never unmapped; the pages are the kernel's.
    std::mem::forget(wal);
    let rec = recover(&dir).expect("recover");
    assert!(rec.cut_tail.is_none());
    assert_eq!(rec.records.len(), 100);
    assert_eq!(rec.records[99].payload, b"r99".to_vec());
}

/// After a failed fsync the kernel may report the lost pages clean, so a later fsync that
/// succeeds proves nothing: no record is called durable again, old or new.
#[tokio::test]
async fn after_a_failed_fsync_nothing_is_called_durable_again() {
    let dir = tempdir("failed");
    let wal = Arc::new(Wal::open(&dir, 1, 1 << 20).expect("open"));
    let first = wal.append(1, b"a").expect("append");
    assert_eq!(wal.sync().expect("sync"), first);
    wal.wait_synced(first)
        .await
        .expect("durable before the failure");
    wal.fail_for_test("EIO");
    let second = wal.append(1, b"b").expect("append");
    assert!(
        matches!(wal.sync(), Err(WalError::SyncFailed(_))),
        "a later fsync is refused"
    );
    assert!(wal.wait_synced(second).await.is_err());
    assert!(
        wal.wait_synced(first).await.is_err(),
        "every later acknowledgement fails"
    );
}

/// Recovery refuses a record longer than MAX_PAYLOAD as corrupt, so the WAL never writes one:
/// the write fails before anything is appended.
#[test]
fn a_record_too_large_to_read_back_is_refused() {
    let dir = tempdir("large");
    let wal = Wal::open(&dir, 1, 1 << 20).expect("open");
    let big = vec![b'x'; record::MAX_PAYLOAD + 1];
    assert!(matches!(wal.append(1, &big), Err(WalError::TooLarge(_))));
    assert_eq!(wal.append(1, b"small").expect("append"), 1);
    drop(wal);
    let rec = recover(&dir).expect("recover");
    assert_eq!(rec.records.len(), 1);
}

/// A skip record moves the numbering on: recovery returns the records around it, not the skip
/// itself, and the next lsn continues above it, across segments and reopenings.
#[test]
fn advance_to_moves_the_numbering_on_across_reopening() {
    let dir = tempdir("skip");
    let wal = Wal::open(&dir, 1, 1024).expect("open");
    for i in 1..=3 {
        assert_eq!(wal.append(1, b"before").expect("append"), i);
    }
    assert!(wal.advance_to(100).expect("advance"));
    assert!(
        !wal.advance_to(50).expect("no step back"),
        "never backwards"
    );
    let after: Vec<u64> = (0..40)
        .map(|_| wal.append(1, b"after, enough to rotate").expect("append"))
        .collect();
    assert_eq!(after.first(), Some(&100));
    drop(wal);
    assert!(
        segment_paths(&dir).expect("list").len() > 1,
        "rotation happened"
    );
    let rec = recover(&dir).expect("recover");
    let lsns: Vec<u64> = rec.records.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns, [vec![1, 2, 3], after.clone()].concat());
    assert_eq!(rec.next_lsn, 140);
    let wal = Wal::open(&dir, rec.next_lsn, 1024).expect("reopen");
    assert_eq!(wal.append(1, b"again").expect("append"), 140);
}
