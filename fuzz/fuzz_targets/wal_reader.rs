//! The WAL reader: `record::decode` on arbitrary bytes, `journal::decode` on arbitrary
//! payloads, and `wal::recover` on a directory of one or two segment files.
//!
//! Input: byte 0 is the mode. Raw mode (bit 0 clear): the rest is the segment bytes, split
//! into two segments at byte 1. Structured mode (bit 0 set): the rest is a list of records
//! (`kind`, `len`, `len` payload bytes) that are encoded with valid checksums and consecutive
//! lsns, then damaged as bytes 1..5 say (cut the tail, flip one byte): this reaches the
//! recovery logic behind the checksums, which random bytes never get past. A record of the
//! WAL's own skip kind becomes a valid skip (its target `len + 1` above its lsn), which the
//! next record's lsn follows and recovery must follow without returning it. Bit 6 of the mode
//! byte makes recovery treat the WAL as after a reboot (`crash_possible`), where damage shaped
//! like lost pages ends the log instead of being refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use writebehind_proxy::wal::record::{self, Decoded, Record};
use writebehind_proxy::wal::{recover, WalError};
use writebehind_proxy::writebehind::journal;

static DIR: OnceLock<PathBuf> = OnceLock::new();

fn check_decode(buf: &[u8]) {
    match record::decode(buf) {
        Decoded::Record(r, n) => {
            assert!(n <= buf.len());
            assert_eq!(n, record::PREFIX + record::HEADER + r.payload.len());
            let mut again = Vec::new();
            record::encode(&mut again, r.kind, r.lsn, &r.payload);
            assert_eq!(again, &buf[..n], "re-encoding a decoded record differs");
        }
        Decoded::Corrupt { len } => assert!(len == 0 || len <= buf.len()),
        Decoded::Incomplete => {}
    }
}

fn check_journal(payload: &[u8]) {
    if let Ok((db, changes)) = journal::decode(payload) {
        assert_eq!(
            journal::encode(&db, &changes),
            payload,
            "journal decoding is not the inverse of encoding"
        );
    }
}

fn segment(dir: &Path, first_lsn: u64, bytes: &[u8]) {
    std::fs::write(dir.join(format!("{first_lsn:020}.wal")), bytes).expect("write segment");
}

fn fresh_dir() -> &'static Path {
    let dir = DIR.get_or_init(|| {
        // tmpfs when there is one: recovery fsyncs the segment whose tail it cuts.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        // Directories of earlier runs whose process is gone (libFuzzer exits without cleanup).
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("writebehind-fuzz-wal-"));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        base.join(format!("writebehind-fuzz-wal-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create WAL dir");
    dir
}

fuzz_target!(|data: &[u8]| {
    check_decode(data);
    check_journal(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = fresh_dir();
    let crash_possible = mode & 0x40 != 0;
    // What was written when nothing is damaged: the records recovery must return exactly
    // (skips are followed, not returned) and the next lsn.
    let mut written: Option<(Vec<Record>, u64)> = None;
    // Structured mode with damage: what was written (recovery returns a prefix of it), and
    // after a lost sector alone how many records before it must come back.
    let mut damaged_from: Option<Vec<Record>> = None;
    let mut lost_sector: Option<usize> = None;
    let mut cut = 0usize;
    if mode & 1 == 0 {
        let Some((&split, seg)) = rest.split_first() else {
            return;
        };
        let split = usize::from(split).min(seg.len());
        let first = u64::from(mode >> 1 & 3) + 1;
        if mode & 0x10 != 0 && split > 0 {
            segment(dir, first, &seg[..split]);
            // The second segment's first lsn: whatever the first one holds, plus one.
            let mut n = 0u64;
            let mut off = 0;
            while let Decoded::Record(_, len) = record::decode(&seg[off..split]) {
                n += 1;
                off += len;
            }
            segment(dir, first + n, &seg[split..]);
        } else {
            segment(dir, first, seg);
        }
    } else {
        if rest.len() < 5 {
            return;
        }
        let (ctl, mut specs) = rest.split_at(5);
        let first = u64::from(ctl[0] & 7) + 1;
        let mut records = Vec::new();
        let mut lsn = first;
        while let [kind, len, tail @ ..] = specs {
            let len = usize::from(*len).min(tail.len());
            let mut payload = tail[..len].to_vec();
            let mut next = lsn + 1;
            if *kind == record::KIND_SKIP {
                // A skip as Wal::advance_to writes it: the next record is numbered `next`.
                next = lsn + 1 + len as u64;
                payload = next.to_le_bytes().to_vec();
            } else if kind & 0x80 != 0 {
                // A real journal payload, so that replay decoding is reached too.
                let db = String::from_utf8_lossy(&payload).into_owned();
                payload = journal::encode(&db, &[]);
            }
            records.push(Record {
                kind: *kind,
                lsn,
                payload,
            });
            lsn = next;
            specs = &tail[len..];
        }
        // Segment boundary: after record `split` (if two segments).
        let split = usize::from(ctl[1]) % (records.len() + 1);
        let two = ctl[0] & 8 != 0 && split > 0 && split < records.len();
        let mut segs: Vec<(u64, Vec<u8>)> = vec![(first, Vec::new())];
        // Where each record lies: (segment, end offset).
        let mut placed = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if two && i == split {
                segs.push((r.lsn, Vec::new()));
            }
            let at = segs.len() - 1;
            let buf = &mut segs[at].1;
            record::encode(buf, r.kind, r.lsn, &r.payload);
            placed.push((at, buf.len()));
        }
        // Damage: cut the last segment's tail by ctl[2] bytes; then either zero one whole
        // 512-byte sector (a page lost in a machine crash; ctl[2] bit 6, where from ctl[3]) or
        // flip a byte by ctl[4] at ctl[3].
        cut = usize::from(ctl[2] & 0x3f);
        let lose = ctl[2] & 0x40 != 0;
        let flip = if lose { 0 } else { ctl[4] };
        if let Some((_, last)) = segs.last_mut() {
            last.truncate(last.len().saturating_sub(cut));
        }
        if lose {
            let seg = usize::from(ctl[3] >> 7) % segs.len();
            let buf = &mut segs[seg].1;
            let sectors = buf.len() / 512;
            if sectors > 0 {
                let b = usize::from(ctl[3] & 0x7f) % sectors * 512;
                if buf[b..b + 512].iter().any(|&x| x != 0) {
                    buf[b..b + 512].fill(0);
                    // Every record before the sector must come back, and recovery must not
                    // refuse: this is exactly what a crash can do.
                    let keep = records
                        .iter()
                        .zip(&placed)
                        .filter(|(r, &(s, end))| {
                            r.kind != record::KIND_SKIP && (s < seg || (s == seg && end <= b))
                        })
                        .count();
                    lost_sector = Some(keep);
                }
            }
        }
        if flip != 0 {
            let seg = usize::from(ctl[3] >> 7) % segs.len();
            let buf = &mut segs[seg].1;
            if !buf.is_empty() {
                let at = usize::from(ctl[3] & 0x7f) * 7 % buf.len();
                buf[at] ^= flip;
            }
        }
        for (first, bytes) in &segs {
            segment(dir, *first, bytes);
        }
        records.retain(|r| r.kind != record::KIND_SKIP);
        if cut == 0 && flip == 0 && lost_sector.is_none() {
            written = Some((records, lsn));
        } else {
            damaged_from = Some(records);
        }
    }

    match recover(dir, crash_possible) {
        Ok(rec) => {
            // Consecutive but where a skip moved the numbering on (skips are not returned).
            for w in rec.records.windows(2) {
                assert!(w[0].lsn < w[1].lsn, "recovered lsns not increasing");
            }
            if let Some(last) = rec.records.last() {
                assert!(
                    rec.next_lsn > last.lsn,
                    "next lsn not above the last record"
                );
            }
            assert!(rec.records.iter().all(|r| r.kind != record::KIND_SKIP));
            for r in &rec.records {
                if r.kind == journal::KIND_CHANGES {
                    check_journal(&r.payload);
                }
            }
            if let Some(w) = &damaged_from {
                assert!(
                    w.starts_with(&rec.records),
                    "recovery returned what was not written, or out of order"
                );
                if let (Some(keep), true, 0) = (lost_sector, crash_possible, cut) {
                    assert!(
                        rec.records.len() >= keep,
                        "a lost sector lost the records before it"
                    );
                }
            }
            if let Some((w, next)) = &written {
                assert_eq!(&rec.records, w, "an undamaged WAL did not recover exactly");
                assert_eq!(rec.next_lsn, *next, "an undamaged WAL numbers on elsewhere");
                assert!(rec.cut_tail.is_none(), "an undamaged WAL had its tail cut");
                assert!(rec.lost.is_none(), "an undamaged WAL was taken for a crash");
            }
            // Recovery is idempotent: after cutting a torn tail, the WAL reads back clean.
            let again =
                recover(dir, crash_possible).expect("a recovered WAL failed to recover again");
            assert_eq!(again.records, rec.records);
            assert_eq!(again.next_lsn, rec.next_lsn);
            assert!(again.cut_tail.is_none(), "second recovery cut again");
            assert!(
                again.lost.is_none(),
                "second recovery found crash damage again"
            );
        }
        Err(WalError::Corrupt { .. }) => {
            assert!(written.is_none(), "an undamaged WAL was refused as corrupt");
            assert!(
                !(crash_possible && cut == 0 && lost_sector.is_some()),
                "a sector lost in a crash was refused after a reboot"
            );
        }
        Err(e) => panic!("unexpected recovery error: {e}"),
    }
});
