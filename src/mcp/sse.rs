//! Streaming rewrite of the events of a `text/event-stream` (SSE) response body.
//!
//! MCP Streamable HTTP servers may answer a JSON-RPC request with a server-sent event stream.
//! [`SseRewriter`] parses such a stream incrementally (arbitrary chunk boundaries; `\n`, `\r\n`
//! and lone `\r` line ends, per the WHATWG parsing rules) and hands the `data` of each complete
//! event to a callback that may replace it. [`RewriteSse`] applies a rewriter to an
//! [`http_body::Body`], yielding each event as soon as it is complete. Only the bytes of the
//! current incomplete event are ever buffered.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The UTF-8 byte order mark, allowed once at the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why an event stream could not be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SseError {
    /// An event grew past the rewriter's `max_event_bytes`.
    EventTooLarge,
    /// The `data` of an event was not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EventTooLarge => "server-sent event exceeds the maximum size",
            Self::InvalidUtf8 => "server-sent event data is not valid utf-8",
        })
    }
}

impl std::error::Error for SseError {}

/// An incremental SSE parser that passes every event through, rewriting the `data` of those
/// for which the callback returns `Some`.
///
/// Unchanged events are emitted byte for byte. A rewritten event keeps its other lines (`id`,
/// `event`, `retry`, comments, unknown fields) in their original order and bytes, has its data
/// lines replaced by `data: <line>\n` lines where the first one was, and ends with `\n`.
/// After an error the rewriter is poisoned and returns that error again.
pub(crate) struct SseRewriter<F> {
    /// Called with the data of each complete event that has any; `Some` replaces it.
    rewrite: F,
    /// The largest event, in bytes, that may be buffered.
    max_event_bytes: usize,
    /// The bytes of the current incomplete event.
    buf: Vec<u8>,
    /// Where the current incomplete line starts in `buf`.
    line_start: usize,
    /// `Some(n)` while at the start of the stream, having seen the first `n` bytes of [`BOM`].
    bom: Option<usize>,
    /// The last byte seen was a `\r` line end, so a `\n` right after it belongs to it.
    after_cr: bool,
    /// Whether the last emitted event was rewritten (and its final line end replaced).
    last_rewritten: bool,
    /// The first error, returned again by every later call.
    failed: Option<SseError>,
}

impl<F: FnMut(&str) -> Option<String>> SseRewriter<F> {
    /// A rewriter calling `rewrite` on each event's data, failing on events over
    /// `max_event_bytes` bytes.
    pub(crate) fn new(rewrite: F, max_event_bytes: usize) -> Self {
        Self {
            rewrite,
            max_event_bytes,
            buf: Vec::new(),
            line_start: 0,
            bom: Some(0),
            after_cr: false,
            last_rewritten: false,
            failed: None,
        }
    }

    /// Feeds the next chunk of the stream, appending to `out` every event it completes.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let result = self.push_chunk(chunk, out);
        if let Err(err) = result {
            self.failed = Some(err);
            self.buf = Vec::new();
        }
        result
    }

    /// Ends the stream. A trailing incomplete event is dropped: it was never decided on,
    /// and a client discards it too (an event is dispatched only at its blank line).
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if let Some(seen) = self.bom.take() {
            out.extend_from_slice(BOM.get(..seen).unwrap_or_default());
        }
        self.buf.clear();
        self.line_start = 0;
        self.after_cr = false;
        Ok(())
    }

    /// Whether bytes are held back that [`Self::finish`] would emit.
    fn has_pending(&self) -> bool {
        self.bom.is_some_and(|seen| seen > 0)
    }

    /// The number of bytes currently buffered.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// [`Self::push`] without the poisoning.
    fn push_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), SseError> {
        let mut chunk = self.take_bom(chunk, out)?;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if let Some((b'\n', rest)) = chunk.split_first() {
                // The `\n` of a `\r\n` split across chunks.
                chunk = rest;
                if !self.buf.is_empty() {
                    self.append(b"\n")?;
                    self.line_start = self.buf.len();
                } else if !self.last_rewritten {
                    out.push(b'\n');
                }
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let blank = end == 0 && self.buf.len() == self.line_start;
            let (line, rest) = chunk
                .split_at_checked(end + terminator_len(chunk, end))
                .unwrap_or((chunk, &[]));
            self.append(line)?;
            self.after_cr = rest.is_empty() && line.ends_with(b"\r");
            chunk = rest;
            if blank {
                self.dispatch(out)?;
            } else {
                self.line_start = self.buf.len();
            }
        }
        self.append(chunk)
    }

    /// Consumes a leading byte order mark (passed straight to `out`), returning the rest.
    fn take_bom<'a>(&mut self, chunk: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], SseError> {
        let Some(seen) = self.bom else {
            return Ok(chunk);
        };
        let expected = BOM.get(seen..).unwrap_or_default();
        let matched = chunk
            .iter()
            .zip(expected)
            .take_while(|(a, b)| a == b)
            .count();
        let seen = seen + matched;
        let rest = chunk.get(matched..).unwrap_or_default();
        if seen == BOM.len() {
            out.extend_from_slice(BOM);
        } else if rest.is_empty() {
            self.bom = Some(seen);
            return Ok(rest);
        } else {
            // Not a BOM after all: its first bytes start the first line.
            self.append(BOM.get(..seen).unwrap_or_default())?;
        }
        self.bom = None;
        Ok(rest)
    }

    /// Adds `bytes` to the current event, enforcing `max_event_bytes`.
    fn append(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.buf.len().saturating_add(bytes.len()) > self.max_event_bytes {
            return Err(SseError::EventTooLarge);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Emits the complete event in `buf` (ending with its blank line), rewritten or not.
    fn dispatch(&mut self, out: &mut Vec<u8>) -> Result<(), SseError> {
        let mut data: Option<String> = None;
        for (line, _) in lines(&self.buf) {
            if let (b"data", value) = field(line) {
                let value = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
                match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                }
            }
        }
        let replacement = data.and_then(|data| (self.rewrite)(&data));
        self.last_rewritten = replacement.is_some();
        match replacement {
            Some(data) => write_rewritten(&self.buf, &data, out),
            None => out.extend_from_slice(&self.buf),
        }
        self.buf.clear();
        self.line_start = 0;
        Ok(())
    }
}

impl<F> fmt::Debug for SseRewriter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRewriter")
            .field("max_event_bytes", &self.max_event_bytes)
            .field("buffered", &self.buf.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The length of the line end starting at `bytes[at]` (a `\r` or `\n`): 2 for `\r\n`, else 1.
fn terminator_len(bytes: &[u8], at: usize) -> usize {
    if bytes.get(at) == Some(&b'\r') && bytes.get(at + 1) == Some(&b'\n') {
        2
    } else {
        1
    }
}

/// The terminated lines of `bytes`, each as (content, content with its line end).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let (full, tail) = rest.split_at_checked(end + terminator_len(rest, end))?;
        rest = tail;
        Some((full.get(..end)?, full))
    })
}

/// Splits a line into field name and value (one leading space stripped); comments have the
/// empty name.
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    let mut parts = line.splitn(2, |&b| b == b':');
    let name = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default();
    (name, value.strip_prefix(b" ").unwrap_or(value))
}

/// Writes `event` with its data lines replaced by `data`, ending with a blank line.
fn write_rewritten(event: &[u8], data: &str, out: &mut Vec<u8>) {
    let mut placed = false;
    let mut ends_with_cr = false;
    for (line, full) in lines(event).filter(|(line, _)| !line.is_empty()) {
        if field(line).0 != b"data" {
            out.extend_from_slice(full);
            ends_with_cr = full.ends_with(b"\r");
        } else if !placed {
            placed = true;
            ends_with_cr = false;
            // Any line end in the new data starts a new data line (a bare `\r` would end it).
            for line in data.split('\n') {
                for part in line.strip_suffix('\r').unwrap_or(line).split('\r') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(part.as_bytes());
                    out.push(b'\n');
                }
            }
        }
    }
    // After a kept line ending in a lone `\r`, a single `\n` would merely complete a `\r\n`.
    out.extend_from_slice(if ends_with_cr { b"\n\n" } else { b"\n" });
}

/// The boxed error of a [`RewriteSse`] body.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A body that rewrites the SSE stream of an inner body event by event with an
    /// [`SseRewriter`], yielding each event in the poll that completes it.
    // (`pin_project!` accepts no doc comments on fields.)
    pub(crate) struct RewriteSse<B, F> {
        // The upstream body.
        #[pin]
        inner: B,
        // The parser and rewriter.
        rewriter: SseRewriter<F>,
        // A trailers frame held back until the flushed tail of the stream has been yielded.
        trailers: Option<Frame<Bytes>>,
        // Whether the inner body has ended or the rewriter failed.
        done: bool,
    }
}

impl<B, F> RewriteSse<B, F> {
    /// Wraps `inner`, passing its data through `rewriter`.
    pub(crate) fn new(inner: B, rewriter: SseRewriter<F>) -> Self {
        Self {
            inner,
            rewriter,
            trailers: None,
            done: false,
        }
    }
}

impl<B, F> Body for RewriteSse<B, F>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: FnMut(&str) -> Option<String>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        while !*this.done {
            let mut out = Vec::new();
            let result = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rewriter.push(&data, &mut out),
                    Err(trailers) => {
                        *this.trailers = Some(trailers);
                        this.rewriter.finish(&mut out)
                    }
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                None => {
                    *this.done = true;
                    this.rewriter.finish(&mut out)
                }
            };
            if let Err(err) = result {
                *this.done = true;
                *this.trailers = None;
                return Poll::Ready(Some(Err(err.into())));
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.into()))));
            }
            if let Some(trailers) = this.trailers.take() {
                return Poll::Ready(Some(Ok(trailers)));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && (self.done || (self.inner.is_end_stream() && !self.rewriter.has_pending()))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B: fmt::Debug, F> fmt::Debug for RewriteSse<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RewriteSse")
            .field("inner", &self.inner)
            .field("rewriter", &self.rewriter)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::rc::Rc;
    use std::task::Waker;

    /// The test callback: rewrites data containing `old`, splitting it over two lines.
    fn rewrite_old(data: &str) -> Option<String> {
        data.contains("old")
            .then(|| data.replace("old", "new\nline"))
    }

    /// Pushes `stream` cut at the sorted offsets `cuts`, then finishes; returns the output and
    /// the largest buffered length seen.
    fn run(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
        let mut rewriter = SseRewriter::new(rewrite_old, 1 << 20);
        let (mut out, mut max, mut start) = (Vec::new(), 0, 0);
        for &cut in cuts.iter().chain([&stream.len()]) {
            rewriter.push(&stream[start..cut], &mut out).unwrap();
            max = max.max(rewriter.buffered());
            start = cut;
        }
        rewriter.finish(&mut out).unwrap();
        (out, max)
    }

    /// Rewrites `stream` in one chunk, returning the output and the data the callback saw.
    fn rewrite_with(stream: &[u8], reply: Option<&str>) -> (Vec<u8>, Vec<String>) {
        let mut seen = Vec::new();
        let mut rewriter = SseRewriter::new(
            |data: &str| {
                seen.push(data.to_owned());
                reply.map(str::to_owned)
            },
            1 << 20,
        );
        let mut out = Vec::new();
        rewriter.push(stream, &mut out).unwrap();
        rewriter.finish(&mut out).unwrap();
        (out, seen)
    }

    #[test]
    fn unchanged_events_are_byte_identical() {
        let stream =
            b"data: \nid: 0\nretry: 3000\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1}\nid: 0/1\n\n\
            : keep\r\nevent: x\r\ndata:a\r\ndata\r\n\r\nid: 2\rdata: b\r\r\n";
        let (out, seen) = rewrite_with(stream, None);
        assert_eq!(out, stream);
        assert_eq!(seen, ["", "{\"jsonrpc\":\"2.0\",\"id\":1}", "a\n", "b"]);
    }

    #[test]
    fn events_without_data_skip_the_callback() {
        let stream = b"id: 1\n\n: keepalive\n\n\nretry: 5\r\n\r\n";
        let (out, seen) = rewrite_with(stream, Some("x"));
        assert_eq!(out, stream);
        assert!(seen.is_empty());
    }

    #[test]
    fn rewritten_event_keeps_other_lines_in_place() {
        let stream =
            b": c\nid: 7\nevent: message\ndata: {\"a\":\ndata:1}\nretry: 10\nfoo\ndata: x\n\n";
        let (out, seen) = rewrite_with(stream, Some("{}\nsecond"));
        assert_eq!(seen, ["{\"a\":\n1}\nx"]);
        let expected = ": c\nid: 7\nevent: message\ndata: {}\ndata: second\nretry: 10\nfoo\n\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn rewrites_with_crlf_and_cr_line_ends() {
        let (out, _) = rewrite_with(b"id: 1\r\ndata: a\r\n\r\n", Some("b"));
        assert_eq!(out, b"id: 1\r\ndata: b\n\n");
        // A kept line ending in a lone `\r` must not swallow the blank line.
        let (out, _) = rewrite_with(b"data: a\rid: 2\r\rdata: c\r\r", Some("b\r\nc\rd"));
        assert_eq!(
            out,
            b"data: b\ndata: c\ndata: d\nid: 2\r\n\ndata: b\ndata: c\ndata: d\n\n"
        );
        let (_, seen) = rewrite_with(&out, None);
        assert_eq!(seen, ["b\nc\nd", "b\nc\nd"]);
    }

    #[test]
    fn a_trailing_incomplete_event_is_dropped() {
        let (out, seen) = rewrite_with(b"data: old\n\ndata: old\nid: 3", Some("new"));
        assert_eq!(out, b"data: new\n\n");
        assert_eq!(seen, ["old"]);
    }

    #[test]
    fn leading_bom_passes_through() {
        let (out, seen) = rewrite_with(b"\xEF\xBB\xBFdata: a\n\n", Some("b"));
        assert_eq!(out, b"\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(seen, ["a"]);
        for stream in [&b"\xEF\xBB"[..], b"\xEFdata: a\n\n"] {
            assert_eq!(rewrite_with(stream, None).0, stream);
        }
    }

    /// A tiny xorshift PRNG.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// A random stream and the size of its largest event.
    fn random_stream(rng: &mut Rng) -> (Vec<u8>, usize) {
        const LINES: [&str; 8] = [
            "data: {\"v\":\"old é漢字🙂\"}",
            "data:🙂 x",
            "data",
            "id: 0/1",
            "event: message",
            "retry: 3000",
            ": comment é",
            "foo:bar",
        ];
        const ENDS: [&str; 3] = ["\n", "\r\n", "\r"];
        let mut stream = if rng.below(3) == 0 {
            BOM.to_vec()
        } else {
            Vec::new()
        };
        let mut largest = 0;
        for event in 0..20 {
            let start = stream.len();
            for _ in 0..rng.below(5) {
                stream.extend_from_slice(LINES[rng.below(LINES.len())].as_bytes());
                stream.extend_from_slice(ENDS[rng.below(3)].as_bytes());
            }
            if event < 19 || rng.below(2) == 0 {
                let mut end = ENDS[rng.below(3)];
                if stream.ends_with(b"\r") && end == "\n" {
                    end = "\r\n"; // keep the event boundaries where they were meant to be
                }
                stream.extend_from_slice(end.as_bytes());
            }
            largest = largest.max(stream.len() - start);
        }
        (stream, largest)
    }

    #[test]
    fn output_does_not_depend_on_chunk_boundaries() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..12 {
            let (stream, largest) = random_stream(&mut rng);
            let (expected, _) = run(&stream, &[]);
            // The output frames the events that were meant, with the callback applied.
            let (_, seen_in) = rewrite_with(&stream, None);
            let (_, seen_out) = rewrite_with(&expected, None);
            let mapped: Vec<_> = seen_in
                .iter()
                .map(|d| rewrite_old(d).unwrap_or(d.clone()))
                .collect();
            assert_eq!(seen_out, mapped);

            let check = |cuts: &[usize]| {
                let (out, max) = run(&stream, cuts);
                assert_eq!(out, expected, "cuts {cuts:?}");
                assert!(max <= largest, "buffered {max} > {largest}");
            };
            for cut in 0..=stream.len() {
                check(&[cut]);
            }
            check(&(1..stream.len()).collect::<Vec<_>>());
            for _ in 0..300 {
                let mut cuts: Vec<_> = (0..1 + rng.below(8))
                    .map(|_| rng.below(stream.len() + 1))
                    .collect();
                cuts.sort_unstable();
                check(&cuts);
            }
        }
    }

    #[test]
    fn oversized_events_fail_and_poison() {
        let mut rewriter = SseRewriter::new(|_: &str| None, 16);
        let mut out = Vec::new();
        for _ in 0..10 {
            rewriter.push(b"data: 0123456\n\n", &mut out).unwrap(); // 15 bytes each
        }
        assert_eq!(out.len(), 150);
        rewriter.push(b"data: 0123", &mut out).unwrap();
        assert_eq!(
            rewriter.push(b"4567890", &mut out),
            Err(SseError::EventTooLarge)
        );
        assert_eq!(
            rewriter.push(b"\n\n", &mut out),
            Err(SseError::EventTooLarge)
        );
        assert_eq!(rewriter.finish(&mut out), Err(SseError::EventTooLarge));
        assert_eq!(rewriter.buffered(), 0);
        assert_eq!(
            SseError::EventTooLarge.to_string(),
            "server-sent event exceeds the maximum size"
        );
    }

    #[test]
    fn invalid_utf8_in_data_fails() {
        let mut out = Vec::new();
        let mut rewriter = SseRewriter::new(|_: &str| None, 1024);
        rewriter.push(b": \xFF\nid: \xFF\n\n", &mut out).unwrap();
        assert_eq!(out, b": \xFF\nid: \xFF\n\n");
        let err = rewriter.push(b"data: \xC3\n\n", &mut out).unwrap_err();
        assert_eq!(err, SseError::InvalidUtf8);
        assert_eq!(err.to_string(), "server-sent event data is not valid utf-8");
    }

    /// An inner body fed by hand from the test.
    #[derive(Clone, Default)]
    struct Chan(Rc<RefCell<(VecDeque<Frame<Bytes>>, bool)>>);

    impl Chan {
        fn send(&self, data: impl Into<Bytes>) {
            self.0.borrow_mut().0.push_back(Frame::data(data.into()));
        }
    }

    impl Body for Chan {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let mut state = self.0.borrow_mut();
            match state.0.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None if state.1 => Poll::Ready(None),
                None => Poll::Pending,
            }
        }

        fn is_end_stream(&self) -> bool {
            let state = self.0.borrow();
            state.0.is_empty() && state.1
        }
    }

    type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

    fn poll(body: &mut RewriteSse<Chan, fn(&str) -> Option<String>>) -> Polled {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    fn data(polled: Polled) -> Bytes {
        match polled {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap(),
            _ => panic!("expected a data frame"),
        }
    }

    fn rewrite_body(chan: &Chan) -> RewriteSse<Chan, fn(&str) -> Option<String>> {
        RewriteSse::new(chan.clone(), SseRewriter::new(rewrite_old, 1024))
    }

    #[test]
    fn body_yields_each_event_as_soon_as_it_is_complete() {
        let upstream = Chan::default();
        let mut body = rewrite_body(&upstream);
        assert!(!body.is_end_stream());
        assert!(body.size_hint().exact().is_none());
        upstream.send("data: \nid: 0\n\ndata: ol");
        assert_eq!(data(poll(&mut body)), "data: \nid: 0\n\n");
        upstream.send("d\nid: 1\n");
        assert!(
            poll(&mut body).is_pending(),
            "no empty frame while event 1 is incomplete"
        );
        upstream.send("\n");
        // Event 2 is still held by the upstream sender.
        assert_eq!(data(poll(&mut body)), "data: new\ndata: line\nid: 1\n\n");
        assert!(poll(&mut body).is_pending());
        upstream.send("data: 2\n\n");
        upstream.0.borrow_mut().1 = true;
        assert_eq!(data(poll(&mut body)), "data: 2\n\n");
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn body_flushes_the_tail_before_trailers() {
        let upstream = Chan::default();
        let mut body = rewrite_body(&upstream);
        upstream.send("data: a\n\nid: tail");
        let mut trailers = Frame::<Bytes>::trailers(Default::default());
        trailers
            .trailers_mut()
            .unwrap()
            .insert("x-done", "1".parse().unwrap());
        upstream.0.borrow_mut().0.push_back(trailers);
        upstream.0.borrow_mut().1 = true;
        assert_eq!(data(poll(&mut body)), "data: a\n\n");
        assert!(!body.is_end_stream());
        let Poll::Ready(Some(Ok(frame))) = poll(&mut body) else {
            panic!("expected trailers")
        };
        assert_eq!(frame.trailers_ref().unwrap()["x-done"], "1");
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn body_end_of_stream_and_errors() {
        let upstream = Chan::default();
        let mut body = rewrite_body(&upstream);
        upstream.send("id: 1");
        assert!(poll(&mut body).is_pending());
        upstream.0.borrow_mut().1 = true;
        // The incomplete event is dropped with the end of the stream.
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(body.is_end_stream());

        let upstream = Chan::default();
        let mut body = rewrite_body(&upstream);
        upstream.send("data: é\n\n");
        upstream.send("x".repeat(2000));
        assert_eq!(data(poll(&mut body)), "data: é\n\n");
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
        assert!(body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }
}
