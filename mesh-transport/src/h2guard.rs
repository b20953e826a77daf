//! HTTP/2 abuse guards the `h2` crate does not have: a frame-header scanner on both directions
//! of a downstream HTTP/2 connection that counts frames and, when a client abuses the
//! protocol, has the connection closed with `GOAWAY` (`ENHANCE_YOUR_CALM`).
//!
//! What `h2` 0.4.20 already bounds (read in its source), and is configured from [`Limits`]
//! in `conn.rs`: streams reset before the server accepted them (CVE-2023-44487's first form,
//! `max_pending_accept_reset_streams`), streams the server resets for the client's errors
//! (`max_local_error_reset_streams`), CONTINUATION floods (CVE-2024-27316: a header block
//! may span only as many frames as the header list size needs), HPACK bombs (a header list
//! over the advertised size is refused with `431`, far over it with `GOAWAY`), empty and tiny
//! DATA frames (a framing-overhead budget), and one pending PING or SETTINGS acknowledgement
//! at a time (reading stops until it is written).
//!
//! What this scanner adds, after Envoy's codec options (`envoy/source/common/http/http2/
//! codec_impl.cc`) and its connection manager's premature-reset check
//! (`ConnectionManagerImpl::maybeDrainDueToPrematureResets`):
//!
//! | guard | trips when | Envoy's |
//! |---|---|---|
//! | premature resets | ≥ [`Limits::http2_premature_reset_min_streams`] streams opened and at least half of them reset by the client | `premature_reset_total_stream_count` (every client reset counts: there is no `min_stream_lifetime` here) |
//! | control floods | [`Limits::http2_max_control_frames_per_second`] PING or SETTINGS frames (not acknowledgements) within one second | `max_outbound_control_frames` (bounded by rate rather than by queue length: `h2` already stops reading while an acknowledgement waits) |
//! | PRIORITY floods | more PRIORITY frames than 100 × (1 + streams opened) | `max_inbound_priority_frames_per_stream` |
//! | WINDOW_UPDATE floods | more WINDOW_UPDATE frames than 5 + 10 × (DATA frames sent + streams opened) | `max_inbound_window_update_frames_per_data_frame_sent` |
//!
//! The scan reads each frame's 9-byte header and skips its payload: no allocation, no copy,
//! a few instructions per frame. On the write side it finds frame boundaries (the `GOAWAY` of
//! a guard is written between two of `h2`'s frames) and counts DATA frames and the `GOAWAY`s
//! `h2` itself sends.

use std::task::Waker;
use std::time::Duration;

use crate::limits::Limits;

/// The HTTP/2 frame types the guards look at (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;

/// `ENHANCE_YOUR_CALM` (RFC 9113 §7).
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Envoy's `max_inbound_priority_frames_per_stream` default.
const PRIORITY_PER_STREAM: u64 = 100;
/// Envoy's `max_inbound_window_update_frames_per_data_frame_sent` default, and its base.
const WINDOW_UPDATES_PER_DATA: u64 = 10;
const WINDOW_UPDATES_BASE: u64 = 5;

/// Why a guard closed an HTTP/2 connection (a label of `mesh_proxy_http2_goaways_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GoAwayCause {
    /// Most of the streams the client opened it also reset (rapid reset, CVE-2023-44487).
    PrematureReset,
    /// Too many PING or SETTINGS frames per second.
    ControlFlood,
    /// Too many PRIORITY frames for the streams opened.
    PriorityFlood,
    /// Too many WINDOW_UPDATE frames for the data sent.
    WindowUpdateFlood,
    /// `h2`'s own abuse limits (CONTINUATION flood, HPACK bomb, empty DATA frames, streams
    /// reset before they were accepted): a `GOAWAY` with `ENHANCE_YOUR_CALM` that `h2` sent.
    H2EnhanceYourCalm,
    /// Any other `GOAWAY` with an error code that `h2` sent (a protocol error by the client).
    H2ProtocolError,
}

impl GoAwayCause {
    /// Every cause, in the order of [`GoAwayCause::index`].
    pub const ALL: [GoAwayCause; 6] = [
        GoAwayCause::PrematureReset,
        GoAwayCause::ControlFlood,
        GoAwayCause::PriorityFlood,
        GoAwayCause::WindowUpdateFlood,
        GoAwayCause::H2EnhanceYourCalm,
        GoAwayCause::H2ProtocolError,
    ];

    /// The metric label: `premature_reset`, `control_flood`, `priority_flood`,
    /// `window_update_flood`, `h2_enhance_your_calm`, `h2_protocol_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            GoAwayCause::PrematureReset => "premature_reset",
            GoAwayCause::ControlFlood => "control_flood",
            GoAwayCause::PriorityFlood => "priority_flood",
            GoAwayCause::WindowUpdateFlood => "window_update_flood",
            GoAwayCause::H2EnhanceYourCalm => "h2_enhance_your_calm",
            GoAwayCause::H2ProtocolError => "h2_protocol_error",
        }
    }

    /// The position of the cause in [`GoAwayCause::ALL`].
    pub fn index(self) -> usize {
        match self {
            GoAwayCause::PrematureReset => 0,
            GoAwayCause::ControlFlood => 1,
            GoAwayCause::PriorityFlood => 2,
            GoAwayCause::WindowUpdateFlood => 3,
            GoAwayCause::H2EnhanceYourCalm => 4,
            GoAwayCause::H2ProtocolError => 5,
        }
    }
}

/// One frame header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Payload length.
    pub len: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared).
    pub stream: u32,
}

/// Finds frame headers in a byte stream fed in arbitrary pieces: keeps at most 9 header bytes
/// and, for a `GOAWAY`, the first 8 payload bytes (to read its error code).
#[derive(Debug, Clone, Default)]
pub struct FrameCursor {
    /// Payload bytes still to skip in the current frame.
    skip: u64,
    head: [u8; 9],
    head_len: u8,
    /// A GOAWAY's last-stream-id and error code, while being collected.
    goaway: [u8; 8],
    goaway_len: u8,
    in_goaway: bool,
}

/// What the cursor saw in one piece of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A frame header.
    Frame(FrameHead),
    /// The error code of a `GOAWAY` (after its header was reported).
    GoAway(u32),
}

impl FrameCursor {
    /// A cursor that first skips `prefix` bytes (the client's 24-byte connection preface).
    pub fn skipping(prefix: u64) -> Self {
        FrameCursor {
            skip: prefix,
            ..FrameCursor::default()
        }
    }

    /// Whether the input so far ends exactly between two frames.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0 && self.head_len == 0 && !self.in_goaway
    }

    /// Scans `bytes`, calling `on` for each frame header and GOAWAY error code completed in
    /// them; stops early (returning false) when `on` returns false.
    pub fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(Seen) -> bool) -> bool {
        while !bytes.is_empty() {
            if self.in_goaway {
                let want = 8 - self.goaway_len as usize;
                let n = want.min(bytes.len());
                self.goaway[self.goaway_len as usize..self.goaway_len as usize + n]
                    .copy_from_slice(&bytes[..n]);
                self.goaway_len += n as u8;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                if self.goaway_len == 8 {
                    self.in_goaway = false;
                    let g = &self.goaway;
                    if !on(Seen::GoAway(u32::from_be_bytes([g[4], g[5], g[6], g[7]]))) {
                        return false;
                    }
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let want = 9 - self.head_len as usize;
            if self.head_len == 0 && bytes.len() >= 9 {
                // the common case: a whole header in place, no copy
                let head = parse(&bytes[..9]);
                bytes = &bytes[9..];
                if !self.start(head, &mut on) {
                    return false;
                }
                continue;
            }
            let n = want.min(bytes.len());
            self.head[self.head_len as usize..self.head_len as usize + n]
                .copy_from_slice(&bytes[..n]);
            self.head_len += n as u8;
            bytes = &bytes[n..];
            if self.head_len == 9 {
                self.head_len = 0;
                let head = parse(&self.head);
                if !self.start(head, &mut on) {
                    return false;
                }
            }
        }
        true
    }

    fn start(&mut self, head: FrameHead, on: &mut impl FnMut(Seen) -> bool) -> bool {
        self.skip = u64::from(head.len);
        if head.kind == GOAWAY && head.len >= 8 {
            self.in_goaway = true;
            self.goaway_len = 0;
        }
        on(Seen::Frame(head))
    }
}

fn parse(b: &[u8]) -> FrameHead {
    FrameHead {
        len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    }
}

/// The guards of one downstream HTTP/2 connection.
#[derive(Debug)]
pub(crate) struct H2Guard {
    read: FrameCursor,
    write: FrameCursor,
    counts: Counts,
    /// Why the connection is to be closed, once a guard tripped.
    pub(crate) tripped: Option<GoAwayCause>,
    /// The GOAWAY frame to write, and how much of it is written.
    pub(crate) goaway: [u8; 17],
    pub(crate) goaway_pos: u8,
    /// The reading task, waiting for `h2` to finish the frame it is writing.
    pub(crate) reader: Option<Waker>,
    /// `h2`'s own GOAWAY (error code) seen on the write side, to be counted.
    pub(crate) h2_goaway: Option<GoAwayCause>,
}

/// What the guards count on one connection.
#[derive(Debug, Default)]
struct Counts {
    opened: u64,
    resets: u64,
    last_stream: u32,
    priority: u64,
    window_updates: u64,
    data_sent: u64,
    control: u32,
    control_since: Option<tokio::time::Instant>,
    premature_min: u64,
    control_max: u32,
}

// === impl H2Guard ===

impl H2Guard {
    pub(crate) fn new(limits: &Limits) -> Self {
        H2Guard {
            read: FrameCursor::skipping(24),
            write: FrameCursor::default(),
            counts: Counts {
                premature_min: u64::from(limits.http2_premature_reset_min_streams.max(1)),
                control_max: limits.http2_max_control_frames_per_second.max(1),
                ..Counts::default()
            },
            tripped: None,
            goaway: [0; 17],
            goaway_pos: 0,
            reader: None,
            h2_goaway: None,
        }
    }

    /// Bytes the client sent. Returns the cause when this trips a guard (once).
    pub(crate) fn received(&mut self, bytes: &[u8]) -> Option<GoAwayCause> {
        if self.tripped.is_some() {
            return None;
        }
        let mut cause = None;
        let counts = &mut self.counts;
        self.read.feed(bytes, |seen| {
            if let Seen::Frame(f) = seen {
                cause = counts.frame(f);
            }
            cause.is_none()
        });
        if let Some(c) = cause {
            self.tripped = Some(c);
            self.goaway = goaway_frame(self.counts.last_stream, ENHANCE_YOUR_CALM);
            self.goaway_pos = 0;
        }
        cause
    }

    /// Bytes `h2` wrote. Wakes the reader when a tripped guard may now write its GOAWAY.
    pub(crate) fn sent(&mut self, bytes: &[u8]) {
        let (data_sent, h2_goaway) = (&mut self.counts.data_sent, &mut self.h2_goaway);
        self.write.feed(bytes, |seen| {
            match seen {
                Seen::Frame(f) if f.kind == DATA => *data_sent += 1,
                Seen::Frame(_) | Seen::GoAway(0) => {}
                Seen::GoAway(ENHANCE_YOUR_CALM) => {
                    *h2_goaway = Some(GoAwayCause::H2EnhanceYourCalm);
                }
                Seen::GoAway(_) => *h2_goaway = Some(GoAwayCause::H2ProtocolError),
            }
            true
        });
        if self.tripped.is_some()
            && self.write.at_boundary()
            && let Some(w) = self.reader.take()
        {
            w.wake();
        }
    }

    /// Whether `h2`'s output ends between two frames (a GOAWAY may be written now).
    pub(crate) fn may_write_goaway(&self) -> bool {
        self.write.at_boundary()
    }
}

// === impl Counts ===

impl Counts {
    fn frame(&mut self, f: FrameHead) -> Option<GoAwayCause> {
        match f.kind {
            HEADERS if f.stream > self.last_stream && f.stream % 2 == 1 => {
                self.last_stream = f.stream;
                self.opened += 1;
                None
            }
            RST_STREAM => {
                self.resets += 1;
                // Envoy: at least `premature_reset_total_stream_count` streams, and at least
                // half of them reset prematurely
                (self.opened >= self.premature_min && self.resets * 2 >= self.opened)
                    .then_some(GoAwayCause::PrematureReset)
            }
            PRIORITY => {
                self.priority += 1;
                (self.priority > PRIORITY_PER_STREAM * (1 + self.opened))
                    .then_some(GoAwayCause::PriorityFlood)
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let allowed =
                    WINDOW_UPDATES_BASE + WINDOW_UPDATES_PER_DATA * (self.data_sent + self.opened);
                (self.window_updates > allowed).then_some(GoAwayCause::WindowUpdateFlood)
            }
            PING | SETTINGS if f.flags & ACK == 0 => self.control_frame(),
            _ => None,
        }
    }

    /// Counts a PING or SETTINGS frame: the clock is read at the first of each batch of
    /// `control_max` and at its last, so a flood trips when a whole batch came within one
    /// second (two clock reads per batch, none per frame).
    fn control_frame(&mut self) -> Option<GoAwayCause> {
        self.control += 1;
        if self.control == 1 {
            self.control_since = Some(tokio::time::Instant::now());
        }
        if self.control < self.control_max {
            return None;
        }
        self.control = 0;
        let since = self.control_since.take()?;
        (since.elapsed() < Duration::from_secs(1)).then_some(GoAwayCause::ControlFlood)
    }
}

/// A GOAWAY frame (RFC 9113 §6.8) on stream 0 without debug data.
pub(crate) fn goaway_frame(last_stream: u32, code: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // length
    f[3] = GOAWAY;
    f[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&code.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let len = payload.len() as u32;
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(kind);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn guard(limits: Limits) -> H2Guard {
        let mut g = H2Guard::new(&limits);
        g.read = FrameCursor::default();
        g
    }

    #[test]
    fn cursor_finds_headers_in_any_split() {
        let mut bytes = frame(HEADERS, 4, 1, &[1, 2, 3]);
        bytes.extend(frame(DATA, 0, 1, &[9; 40]));
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 11]));
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        let whole = {
            let mut seen = Vec::new();
            FrameCursor::default().feed(&bytes, |s| {
                seen.push(s);
                true
            });
            seen
        };
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert_eq!(whole[3], Seen::GoAway(11));
        for split in 1..bytes.len() {
            let mut seen = Vec::new();
            let mut c = FrameCursor::default();
            for piece in bytes.chunks(split) {
                c.feed(piece, |s| {
                    seen.push(s);
                    true
                });
            }
            assert_eq!(seen, whole, "pieces of {split}");
            assert!(c.at_boundary());
        }
    }

    #[test]
    fn rapid_reset_trips_at_half_of_the_minimum() {
        let mut g = guard(Limits {
            http2_premature_reset_min_streams: 10,
            ..Limits::default()
        });
        let mut tripped = None;
        for id in (1..).step_by(2).take(10) {
            assert_eq!(tripped, None);
            let mut b = frame(HEADERS, 5, id, &[0x82]);
            b.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 8]));
            tripped = g.received(&b);
        }
        assert_eq!(tripped, Some(GoAwayCause::PrematureReset));
        assert_eq!(&g.goaway[9..13], &19u32.to_be_bytes());
        assert_eq!(&g.goaway[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }

    #[test]
    fn streams_that_complete_do_not_trip_the_reset_guard() {
        let mut g = guard(Limits {
            http2_premature_reset_min_streams: 10,
            ..Limits::default()
        });
        for id in (1..).step_by(2).take(1000) {
            let mut b = frame(HEADERS, 5, id, &[0x82]);
            // one in three cancelled: under half
            if id % 3 == 0 {
                b.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 8]));
            }
            assert_eq!(g.received(&b), None, "stream {id}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_flood_trips_but_a_slow_pinger_does_not() {
        let limits = Limits {
            http2_max_control_frames_per_second: 100,
            ..Limits::default()
        };
        let ping = frame(PING, 0, 0, &[0; 8]);
        let mut slow = guard(limits.clone());
        for _ in 0..1000 {
            assert_eq!(slow.received(&ping), None);
            tokio::time::advance(Duration::from_millis(11)).await;
        }
        let mut fast = guard(limits);
        let trips: Vec<_> = (0..100).filter_map(|_| fast.received(&ping)).collect();
        assert_eq!(trips, [GoAwayCause::ControlFlood]);
        // acknowledgements are not counted
        let mut acks = guard(Limits {
            http2_max_control_frames_per_second: 2,
            ..Limits::default()
        });
        for _ in 0..10 {
            assert_eq!(acks.received(&frame(SETTINGS, ACK, 0, &[])), None);
        }
    }

    #[test]
    fn priority_and_window_update_floods_trip() {
        let mut g = guard(Limits::default());
        let prio = frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]);
        let trips: Vec<_> = (0..=PRIORITY_PER_STREAM)
            .filter_map(|_| g.received(&prio))
            .collect();
        assert_eq!(trips, [GoAwayCause::PriorityFlood]);

        let mut g = guard(Limits::default());
        let wu = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]);
        for _ in 0..WINDOW_UPDATES_BASE {
            assert_eq!(g.received(&wu), None);
        }
        // each DATA frame the server sends earns ten
        g.sent(&frame(DATA, 0, 1, &[0; 3]));
        for _ in 0..WINDOW_UPDATES_PER_DATA {
            assert_eq!(g.received(&wu), None);
        }
        assert_eq!(g.received(&wu), Some(GoAwayCause::WindowUpdateFlood));
    }

    #[test]
    fn h2s_own_goaways_are_seen_on_the_write_side() {
        let mut g = guard(Limits::default());
        g.sent(&frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(g.h2_goaway, None, "NO_ERROR (graceful) is not abuse");
        g.sent(&frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 11, b'x']));
        assert_eq!(g.h2_goaway, Some(GoAwayCause::H2EnhanceYourCalm));
    }
}
