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
    let rec = recover(dir, false).expect("recover");
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
    let rec = recover(&dir, false).expect("recover");
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
    let wal = Wal::open(&dir, recover(&dir, false).expect("recover").next_lsn, 1024).expect("open");
    let removed = wal.remove_below(200).expect("remove");
    assert!(removed > 0);
    let rec = recover(&dir, false).expect("recover after removal");
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
    let wal = Wal::open(&dir, recover(&dir, false).expect("recover").next_lsn, 1024).expect("open");
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
    let rec = recover(&dir, false).expect("recover after removal");
    assert_eq!(rec.records.last().map(|r| r.lsn), Some(300));
}

#[test]
fn torn_tail_is_cut_and_appending_resumes() {
    let dir = tempdir("torn");
    let written = write_n(&dir, 50, 1 << 20);
    let seg = last_segment(&dir);
    let len = std::fs::metadata(&seg).expect("meta").len();
    set_len(&seg, len - 5);
    let rec = recover(&dir, false).expect("torn tail is not an error");
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
    let again = recover(&dir, false).expect("recover again");
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
    let err = recover(&dir, false).expect_err("corruption must be refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

/// Where each record of a segment's bytes ends.
fn record_ends(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut off = 0;
    while let record::Decoded::Record(_, n) = record::decode(&data[off..]) {
        off += n;
        ends.push(off);
    }
    ends
}

/// A page that never reached the disk in a machine crash (zeros, valid log after it): refused
/// as corruption when no crash was possible, the end of the log after a reboot. The records
/// before the page stay, the log goes on from there, and a second recovery finds it clean.
#[test]
fn a_lost_page_ends_the_log_only_after_a_reboot() {
    let dir = tempdir("lostpage");
    let written = write_n(&dir, 600, 1 << 20);
    let seg = last_segment(&dir);
    let mut data = std::fs::read(&seg).expect("read");
    assert!(data.len() > 4 * 4096, "several pages: {}", data.len());
    data[2 * 4096..3 * 4096].fill(0);
    std::fs::write(&seg, &data).expect("write");
    let kept = record_ends(&data).len();
    assert!(kept > 0 && kept < 600);

    let err = recover(&dir, false).expect_err("without a reboot a hole is corruption");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&seg).expect("read"), data, "nothing was cut");

    let rec = recover(&dir, true).expect("after a reboot the hole ends the log");
    let payloads: Vec<_> = rec.records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, written[..kept]);
    assert_eq!(rec.next_lsn, kept as u64 + 1);
    let lost = rec.lost.expect("the crash damage is reported");
    assert_eq!(lost.segment, seg);
    assert_eq!(
        lost.set_aside.len(),
        1,
        "a copy of the cut segment, nothing after it"
    );
    assert_eq!(std::fs::read(&lost.set_aside[0]).expect("read copy"), data);
    let again = recover(&dir, false).expect("clean after the cut");
    assert_eq!(again.records.len(), kept);
    assert!(again.lost.is_none() && again.cut_tail.is_none());
    let wal = Wal::open(&dir, again.next_lsn, 1 << 20).expect("reopen");
    assert_eq!(wal.append(1, b"after").expect("append"), kept as u64 + 1);
}

/// A lost sector whose first bytes belong to an intact record that ends in zeros of its own:
/// the first damaged record starts inside the sector, and the log still ends there after a
/// reboot (found by the wal_reader fuzz target).
#[test]
fn a_lost_sector_after_a_record_ending_in_zeros_ends_the_log_after_a_reboot() {
    let dir = tempdir("zeroend");
    let wal = Wal::open(&dir, 1, 1 << 20).expect("open");
    // Record 1 fills [0, 1007), record 2's header [1007, 1024), its zero payload [1024, 1324).
    wal.append(1, &[b'x'; 990]).expect("append");
    wal.append(1, &[0; 300]).expect("append");
    for _ in 0..10 {
        wal.append(1, &[b'y'; 100]).expect("append");
    }
    drop(wal);
    let seg = last_segment(&dir);
    let mut data = std::fs::read(&seg).expect("read");
    assert_eq!(record_ends(&data)[..2], [1007, 1324]);
    data[1024..1536].fill(0);
    std::fs::write(&seg, &data).expect("write");
    assert!(recover(&dir, false).is_err(), "no reboot: corruption");
    let rec = recover(&dir, true).expect("after a reboot the sector ends the log");
    assert_eq!(rec.records.len(), 2);
    assert_eq!(rec.lost.expect("reported").offset, 1324);
}

/// A flipped bit is not the shape of a lost page: refused even after a reboot.
#[test]
fn a_flipped_byte_is_corruption_even_after_a_reboot() {
    let dir = tempdir("flipreboot");
    write_n(&dir, 50, 1 << 20);
    let seg = last_segment(&dir);
    let mut data = std::fs::read(&seg).expect("read");
    data[100] ^= 0x01;
    std::fs::write(&seg, &data).expect("write");
    let err = recover(&dir, true).expect_err("corruption must be refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

/// A segment whose end a crash lost (its rotation reached the disk, its last pages did not):
/// zeros from a record boundary to the end of the file, and the next segment starting above
/// what is left. After a reboot the log ends with it and the later segments are set aside, not
/// deleted; without one it is corruption. A segment that simply ends early, with no zeros
/// (a segment removed by hand), is corruption even after a reboot.
#[test]
fn a_segment_cut_short_by_a_crash_sets_the_later_ones_aside_after_a_reboot() {
    let dir = tempdir("shortseg");
    let written = write_n(&dir, 300, 1024);
    let segs = segment_paths(&dir).expect("list");
    assert!(segs.len() > 3, "rotation happened");
    let (first_of_second, second) = &segs[1];
    let mut data = std::fs::read(second).expect("read");
    let ends = record_ends(&data);
    // The last record boundary with a whole sector after it: what the crash lost is zeros.
    let k = ends
        .iter()
        .rposition(|&e| e + 512 <= data.len())
        .expect("a boundary a sector before the end");
    data[ends[k]..].fill(0);
    std::fs::write(second, &data).expect("write");
    let kept = (*first_of_second - 1) as usize + k + 1;

    let err = recover(&dir, false).expect_err("without a reboot a gap is corruption");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");

    let rec = recover(&dir, true).expect("after a reboot the short segment ends the log");
    let payloads: Vec<_> = rec.records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, written[..kept]);
    let lost = rec.lost.expect("reported");
    assert_eq!(&lost.segment, second);
    assert_eq!(lost.offset, ends[k] as u64);
    assert_eq!(lost.set_aside.len(), segs.len() - 2);
    assert!(
        lost.set_aside.iter().all(|p| p.exists()),
        "kept for inspection"
    );
    assert_eq!(segment_paths(&dir).expect("list").len(), 2);
    let again = recover(&dir, false).expect("clean after setting aside");
    assert_eq!(again.records.len(), kept);
    // The short segment is the last one now: appends go on right after its records.
    let wal = Wal::open(&dir, again.next_lsn, 1024).expect("reopen");
    assert_eq!(wal.append(1, b"after").expect("append"), kept as u64 + 1);
    drop(wal);
    let rec = recover(&dir, false).expect("clean after appending");
    assert_eq!(rec.records.len(), kept + 1);
}

/// A segment that ends at a record boundary without zeros, followed by a gap: not what a
/// crash leaves (a lost page is zeros), so refused even after a reboot.
#[test]
fn a_segment_that_ends_cleanly_before_a_gap_is_corruption_even_after_a_reboot() {
    let dir = tempdir("cleangap");
    write_n(&dir, 300, 1024);
    let segs = segment_paths(&dir).expect("list");
    let (_, second) = &segs[1];
    let ends = record_ends(&std::fs::read(second).expect("read"));
    set_len(second, ends[ends.len() / 2] as u64);
    let err = recover(&dir, true).expect_err("a clean early end is not a crash");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

/// A flipped bit in the last record of a rotated segment whose trim did not happen (its
/// reserve of zeros follows the record): the zeros begin after the damaged record, so they are
/// not a lost page, and recovery refuses even after a reboot.
#[test]
fn a_flipped_last_record_before_reserve_zeros_is_corruption_even_after_a_reboot() {
    let dir = tempdir("flipreserve");
    write_n(&dir, 300, 1024);
    let segs = segment_paths(&dir).expect("list");
    let (_, second) = &segs[1];
    let mut data = std::fs::read(second).expect("read");
    let ends = record_ends(&data);
    let last_end = *ends.last().expect("records");
    data.truncate(last_end);
    data[last_end - 3] ^= 0x10;
    data.resize(64 << 10, 0);
    std::fs::write(second, &data).expect("write");
    let err = recover(&dir, true).expect_err("a flipped bit is not a lost page");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

/// The boot id: unknown at first (no crash possible), stored after recovery, and a stored id
/// that is not the kernel's means the machine rebooted.
#[test]
fn the_boot_id_tells_a_reboot_from_a_restart() {
    let dir = tempdir("boot");
    let mut d = WalDir::open(&dir, None).expect("open");
    assert!(!d.crash_possible(), "nothing stored yet");
    d.record_boot().expect("record");
    drop(d);
    let d = WalDir::open(&dir, None).expect("reopen");
    assert!(!d.crash_possible(), "same boot");
    drop(d);
    std::fs::write(dir.join("boot_id"), "another-boot\n").expect("write");
    let mut d = WalDir::open(&dir, None).expect("reopen");
    assert!(d.crash_possible(), "a different boot id is a reboot");
    d.record_boot().expect("record");
    drop(d);
    assert!(!WalDir::open(&dir, None).expect("reopen").crash_possible());
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
    let rec = recover(&dir, false).expect("a damaged last record is cut");
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
    let rec = recover(&dir, false).expect("zeros are the end of the log, not damage");
    assert!(rec.cut_tail.is_none(), "zeros are not a torn tail");
    assert_eq!(rec.records.len(), 30);
    assert_eq!(rec.records[29].payload, written[29]);
    assert_eq!(std::fs::metadata(&seg).expect("meta").len(), len, "trimmed");
    write_n(&dir, 1, 1 << 20);
    assert_eq!(recover(&dir, false).expect("again").records.len(), 31);
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
    let rec = recover(&dir, false).expect("recover");
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
    let rec = recover(&dir, false).expect("recover");
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
    let rec = recover(&dir, false).expect("recover");
    let lsns: Vec<u64> = rec.records.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns, [vec![1, 2, 3], after.clone()].concat());
    assert_eq!(rec.next_lsn, 140);
    let wal = Wal::open(&dir, rec.next_lsn, 1024).expect("reopen");
    assert_eq!(wal.append(1, b"again").expect("append"), 140);
}
