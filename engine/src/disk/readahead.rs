//! Readahead of the engine's own for live disk files.
//!
//! Buffered disk files are opened with `POSIX_FADV_RANDOM`, so the kernel reads what is
//! asked and nothing more, into single-page folios. Its own readahead fills the page cache
//! with large folios instead (up to 2 MiB), and ext4 (Linux 6.16 and later) walks every
//! block of a folio for each small write into it: after a sequential read of a disk (a
//! backup through NBD, a capture, a guest booting), 4 KiB random writes into that disk ran
//! at 20k IOPS here against 70k. `POSIX_FADV_WILLNEED` reads ahead in single-page folios,
//! so the engine finds sequential streams itself and asks for what comes next.
//!
//! A stream is a run of reads each starting near where the previous ones ended (requests
//! in flight together may arrive a little out of order). Once a stream has shown itself
//! sequential, each read that leaves less than half a window prefetched ahead of it asks
//! for the next window, which doubles up to [`MAX_WINDOW`]. A stream over data already in
//! the page cache asks for nothing: only a read that missed the cache, or one inside a
//! range the stream itself prefetched, keeps it going.

use std::sync::Mutex;

/// Streams followed at once per disk (multi-connection copies read several runs at once).
const STREAMS: usize = 8;
/// Reads in a row that make a stream sequential.
const CONFIRM: u32 = 3;
const FIRST_WINDOW: u64 = 256 << 10;
/// The most read ahead of a stream at once.
pub(crate) const MAX_WINDOW: u64 = 4 << 20;

#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    /// Where the stream's reads have reached.
    front: u64,
    /// Where its readahead has reached.
    ahead: u64,
    window: u64,
    /// Reads in a row that continued it.
    run: u32,
    /// When it was last continued (a counter), to pick the one to replace.
    used: u64,
}

/// The streams of one disk.
#[derive(Debug, Default)]
pub(crate) struct Readahead {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    streams: [Stream; STREAMS],
    clock: u64,
}

impl Readahead {
    /// Notes a read of `[offset, offset + len)` of a disk of `size` bytes; `missed` says
    /// whether it had to wait for the disk (unknown counts as missed). Returns the range to
    /// read ahead, if any.
    pub(crate) fn on_read(&self, offset: u64, len: u64, size: u64, missed: bool) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len).min(size);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.clock += 1;
        let clock = state.clock;
        // Near the front: at most twice this read's length beyond it (it overtook a request
        // or two), and behind it by as much for a new stream, a window for a sequential one
        // (reads that were overtaken arrive late).
        let continued = state.streams.iter_mut().find(|s| {
            let behind = if s.run >= CONFIRM { s.window } else { 2 * len };
            s.run > 0 && offset + behind >= s.front && offset <= s.front + 2 * len
        });
        let Some(stream) = continued else {
            let oldest = state.streams.iter_mut().min_by_key(|s| s.used)?;
            *oldest = Stream { front: end, ahead: end, window: FIRST_WINDOW, run: 1, used: clock };
            return None;
        };
        let inside_prefetched = offset < stream.ahead;
        stream.front = stream.front.max(end);
        stream.run = stream.run.saturating_add(1);
        stream.used = clock;
        if stream.run < CONFIRM || !(missed || inside_prefetched) {
            return None;
        }
        if stream.ahead >= stream.front + stream.window / 2 {
            return None;
        }
        let from = stream.ahead.max(stream.front);
        let to = (stream.front + stream.window).min(size);
        stream.ahead = to.max(stream.ahead);
        stream.window = (stream.window * 2).min(MAX_WINDOW);
        (to > from).then(|| (from, to - from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 1 << 30;

    /// Reads `[start, start + n * len)` in order, all missing the cache; returns what was
    /// asked ahead.
    fn sequential(ra: &Readahead, start: u64, len: u64, n: u64) -> Vec<(u64, u64)> {
        (0..n).filter_map(|i| ra.on_read(start + i * len, len, SIZE, true)).collect()
    }

    #[test]
    fn a_sequential_stream_reads_ahead_in_growing_windows() {
        let ra = Readahead::default();
        let asked = sequential(&ra, 0, 128 << 10, 64);
        // Nothing on the first read: one read is not a stream.
        assert!(!asked.is_empty());
        assert!(asked[0].0 >= 128 << 10, "{asked:?}");
        // What is asked is contiguous and ahead of the reads, and windows grow to the cap.
        for w in asked.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0, "{asked:?}");
        }
        assert!(asked.iter().any(|&(_, len)| len >= 2 * MIB), "{asked:?}");
        assert!(asked.iter().all(|&(_, len)| len <= MAX_WINDOW));
        // The readahead stays ahead of the reader: the end of what was asked is past the
        // last read.
        let (from, len) = *asked.last().unwrap();
        assert!(from + len > 64 * (128 << 10));
    }

    #[test]
    fn random_reads_do_not_read_ahead() {
        let ra = Readahead::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x % (SIZE / 4096)) * 4096;
            assert_eq!(ra.on_read(offset, 4096, SIZE, true), None, "random read at {offset}");
        }
    }

    #[test]
    fn a_stream_over_cached_data_asks_for_nothing() {
        let ra = Readahead::default();
        for i in 0..100 {
            assert_eq!(ra.on_read(i * MIB, MIB, SIZE, false), None);
        }
        // When it reaches data that is not cached, readahead starts.
        assert!(ra.on_read(100 * MIB, MIB, SIZE, true).is_some());
        // And goes on while the reads stay inside what it prefetched, though they hit.
        let more: Vec<_> = (101..120).filter_map(|i| ra.on_read(i * MIB, MIB, SIZE, false)).collect();
        assert!(!more.is_empty());
    }

    #[test]
    fn interleaved_streams_are_followed_apart() {
        let ra = Readahead::default();
        let mut asked = Vec::new();
        for i in 0..32 {
            for base in [0, 256 * MIB, 512 * MIB] {
                if let Some(r) = ra.on_read(base + i * (256 << 10), 256 << 10, SIZE, true) {
                    asked.push((base, r));
                }
            }
        }
        for base in [0, 256 * MIB, 512 * MIB] {
            let mine: Vec<_> = asked.iter().filter(|(b, _)| *b == base).map(|(_, r)| *r).collect();
            assert!(!mine.is_empty(), "stream at {base} got no readahead");
            assert!(mine.iter().all(|&(from, len)| from >= base && from + len <= base + 64 * MIB));
        }
    }

    #[test]
    fn reads_arriving_a_little_out_of_order_stay_one_stream() {
        let ra = Readahead::default();
        let len = 64 << 10;
        let mut asked = Vec::new();
        // Pairs swapped: 1, 0, 3, 2, 5, 4, ...
        for i in 0..64u64 {
            let k = i ^ 1;
            asked.extend(ra.on_read(k * len, len, SIZE, true));
        }
        assert!(!asked.is_empty());
        for w in asked.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0, "{asked:?}");
        }
    }

    #[test]
    fn readahead_stops_at_the_end_of_the_disk() {
        let ra = Readahead::default();
        let size = 3 * MIB;
        for i in 0..48 {
            if let Some((from, len)) = ra.on_read(i * (64 << 10), 64 << 10, size, true) {
                assert!(from + len <= size);
            }
        }
    }
}
