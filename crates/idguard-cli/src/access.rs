//! The access log and the request id: every request carries an `x-request-id` (the
//! caller's, when it sent a usable one), sent back on the reply and upstream in gateway
//! mode, and ends with one line at info under target `idguard::access`:
//!
//! ```text
//! 2026-12-01T03:00:00.123456Z  INFO idguard::access: POST /mcp 200 153us request_id=9f2c4e1a7b3d5c60-1f
//! ```
//!
//! (method, path without the query, status, time to the reply's head). Every other line
//! logged while the request is served ends with the same `request_id=`
//! ([`WithRequestId`]). The same layer counts the answer for `/metrics`.
//!
//! This replaces tower-http's `TraceLayer` and a UUID per request: the line is written
//! straight to standard error in the log's format (no span per request, no event through
//! the formatter, no `Debug` visitor per field), and the id costs an atomic increment
//! instead of a `getrandom` call (`benches/load/README.md`, "The gateway scenario").
//! `IDGUARD_LOG` still decides: `…,idguard::access=off` turns the line off.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::response::Response;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};
use tokio::task::futures::TaskLocalFuture;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::time::FormatTime;

use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

use super::metrics::Metrics;

/// The request id header.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller; a longer (or not visible ASCII) one is
/// replaced by idguard's own.
const MAX_CALLER_ID: usize = 128;

tokio::task_local! {
    /// The id of the request the current task serves.
    static REQUEST_ID: RequestId;
}

/// An `x-request-id` value: visible ASCII (checked where it is made).
#[derive(Clone)]
struct RequestId(HeaderValue);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

/// idguard's request ids: a random prefix drawn once per process, then a counter.
///
/// A request id is a correlation id, not a secret and not an authorization: it only has
/// to be unique, across replicas too (64 random bits per process make a clash between two
/// processes' prefixes negligible), and may be guessed. So no random draw per request.
struct Ids {
    prefix: [u8; 16],
    next: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        let (random, _) = uuid::Uuid::new_v4().as_u64_pair();
        let mut prefix = [0; 16];
        hex(random, &mut prefix);
        Self {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// The next id: `<16 hex digits>-<counter in hex>`.
    fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [b'-'; 33];
        let (prefix, counter) = id.split_at_mut(17);
        if let Some(p) = prefix.get_mut(..16) {
            p.copy_from_slice(&self.prefix);
        }
        let mut digits = [0; 16];
        hex(n, &mut digits);
        // Without leading zeros (at least one digit).
        let skip = digits.iter().take(15).take_while(|d| **d == b'0').count();
        let digits = digits.get(skip..).unwrap_or_default();
        let len = 17 + digits.len();
        if let Some(c) = counter.get_mut(..digits.len()) {
            c.copy_from_slice(digits);
        }
        let value = HeaderValue::from_bytes(id.get(..len).unwrap_or_default())
            .unwrap_or(HeaderValue::from_static("-"));
        RequestId(value)
    }
}

/// `n` as 16 lowercase hex digits.
fn hex(n: u64, out: &mut [u8; 16]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in out.iter_mut().enumerate() {
        let nibble = (n >> (60 - 4 * i)) & 0xf;
        *d = DIGITS.get(nibble as usize).copied().unwrap_or(b'0');
    }
}

/// The caller's request id when it is usable: visible ASCII, 1 to 128 bytes.
fn from_caller(req: &Request) -> Option<RequestId> {
    let value = req.headers().get(X_REQUEST_ID)?;
    let usable = (1..=MAX_CALLER_ID).contains(&value.len())
        && value.as_bytes().iter().all(u8::is_ascii_graphic);
    usable.then(|| RequestId(value.clone()))
}

/// The outermost layer of `idguard serve`: the request id, the access log line, and the
/// answer counted in `metrics`.
#[derive(Clone)]
pub(crate) struct AccessLogLayer {
    ids: Arc<Ids>,
    metrics: Arc<Metrics>,
}

impl AccessLogLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ids: Arc::new(Ids::new()),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            ids: self.ids.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// [`AccessLogLayer`]'s service.
#[derive(Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
    ids: Arc<Ids>,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request> for AccessLog<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = match from_caller(&req) {
            Some(id) => id,
            None => {
                let id = self.ids.next();
                req.headers_mut().insert(X_REQUEST_ID, id.0.clone());
                id
            }
        };
        let line = tracing::enabled!(target: "idguard::access", tracing::Level::INFO)
            .then(|| (req.method().clone(), req.uri().clone(), Instant::now()));
        ResponseFuture {
            inner: REQUEST_ID.scope(id.clone(), self.inner.call(req)),
            id: Some(id),
            line,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`AccessLog`]'s future.
    pub(crate) struct ResponseFuture<F: Future> {
        #[pin]
        inner: TaskLocalFuture<RequestId, F>,
        id: Option<RequestId>,
        line: Option<(Method, Uri, Instant)>,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        let Some(id) = this.id.take() else {
            return Poll::Ready(Ok(res));
        };
        this.metrics.observe(&res);
        if let Some((method, uri, started)) = this.line.take() {
            write_line(&method, uri.path(), res.status().as_u16(), started, &id);
        }
        res.headers_mut().entry(X_REQUEST_ID).or_insert(id.0);
        Poll::Ready(Ok(res))
    }
}

/// Whether log lines are coloured (set by `main` with the log format).
static COLOUR: AtomicBool = AtomicBool::new(false);

/// Colours the access line as the other log lines are (a person at a terminal).
pub(crate) fn set_colour(on: bool) {
    COLOUR.store(on, Ordering::Relaxed);
}

/// Writes the access line of a request to standard error, in the format of the other log
/// lines, with one write.
fn write_line(method: &Method, path: &str, status: u16, started: Instant, id: &RequestId) {
    let micros = started.elapsed().as_micros();
    let mut time = [0; TIMESTAMP_LEN];
    timestamp(SystemTime::now(), &mut time);
    let mut line = Vec::with_capacity(80 + path.len() + id.0.len());
    if COLOUR.load(Ordering::Relaxed) {
        line.extend_from_slice(b"\x1b[2m");
        line.extend_from_slice(&time);
        line.extend_from_slice(
            b"\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2midguard::access\x1b[0m\x1b[2m:\x1b[0m ",
        );
    } else {
        line.extend_from_slice(&time);
        line.extend_from_slice(b"  INFO idguard::access: ");
    }
    let mut number = itoa::Buffer::new();
    for part in [
        method.as_str().as_bytes(),
        b" ",
        path.as_bytes(),
        b" ",
        number.format(status).as_bytes(),
        b" ",
    ] {
        line.extend_from_slice(part);
    }
    line.extend_from_slice(number.format(micros).as_bytes());
    line.extend_from_slice(b"us request_id=");
    line.extend_from_slice(id.0.as_bytes());
    line.push(b'\n');
    // A failed write (a closed standard error) loses the line, as the other lines would be.
    let _ = std::io::stderr().lock().write_all(&line);
}

/// `2026-12-01T03:00:00.123456Z`: UTC, to the microsecond, as tracing's default timer.
const TIMESTAMP_LEN: usize = 27;

/// Writes `at` as an RFC 3339 UTC timestamp with microseconds.
fn timestamp(at: SystemTime, out: &mut [u8; TIMESTAMP_LEN]) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant, "chrono-Compatible Low-Level Date
    // Algorithms"), for dates after 1970 only.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let fields: [(u64, usize); 7] = [
        (year, 4),
        (month, 2),
        (day, 2),
        (of_day / 3600, 2),
        (of_day % 3600 / 60, 2),
        (of_day % 60, 2),
        (u64::from(since.subsec_micros()), 6),
    ];
    let mut at = 0;
    for ((value, width), after) in fields.into_iter().zip(*b"--T::.Z") {
        if let Some(digits) = out.get_mut(at..at + width) {
            let mut v = value;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        if let Some(sep) = out.get_mut(at + width) {
            *sep = after;
        }
        at += width + 1;
    }
}

/// The binary's log timer: [`timestamp`], the format of tracing's default timer for less.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UtcTime;

impl FormatTime for UtcTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let mut time = [0; TIMESTAMP_LEN];
        timestamp(SystemTime::now(), &mut time);
        w.write_str(std::str::from_utf8(&time).unwrap_or_default())
    }
}

/// The binary's field formatter: [`DefaultFields`]' output, then ` request_id=<id>` on
/// every line written while a request is served.
///
/// Without colours, plain strings (visible ASCII without `"` or `\`), integers and
/// booleans are written directly, byte for byte as [`DefaultFields`] writes them through
/// `Debug`; every other value goes through [`DefaultFields`]' own visitor. An audit line
/// (`idguard::audit`, one per decided call) costs about half as much.
#[derive(Debug, Default)]
pub(crate) struct WithRequestId(DefaultFields);

impl<'writer> FormatFields<'writer> for WithRequestId {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() {
            self.0.format_fields(writer.by_ref(), fields)?;
        } else {
            let mut plain = PlainFields {
                writer: writer.by_ref(),
                is_empty: true,
                result: Ok(()),
            };
            fields.record(&mut plain);
            plain.result?;
        }
        REQUEST_ID
            .try_with(|id| write!(writer, " request_id={id}"))
            .unwrap_or(Ok(()))
    }
}

/// [`WithRequestId`]'s visitor without colours.
struct PlainFields<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainFields<'_> {
    /// Writes `name=` after the separating space, as the default visitor does.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.is_empty) {
            self.writer.write_char(' ')?;
        }
        let name = field.name();
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_char('=')
    }

    /// Lets the default visitor write this field.
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }
}

impl Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let plain = value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if field.name() == "message" || !plain {
            return self.default(|v| v.record_str(field, value));
        }
        self.result = self.name(field).and_then(|()| {
            self.writer.write_char('"')?;
            self.writer.write_str(value)?;
            self.writer.write_char('"')
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() {
            self.default(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.default(|v| v.record_debug(field, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_a_process_prefix_and_a_counter() {
        let ids = Ids::new();
        let (a, b) = (ids.next().to_string(), ids.next().to_string());
        assert_eq!(a.len(), 18, "{a}");
        assert_eq!(&a[..17], &b[..17]);
        assert!(a.ends_with("-1") && b.ends_with("-2"), "{a} {b}");
        assert!(a[..16].bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert!(ids.next().to_string().ends_with("-ffffffffffffffff"));
        assert_ne!(&Ids::new().next().to_string()[..16], &a[..16]);
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = [0; TIMESTAMP_LEN];
            timestamp(
                UNIX_EPOCH + std::time::Duration::from_micros(secs * 1_000_000 + micros),
                &mut out,
            );
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_764_558_359, 571_823), "2025-12-01T03:05:59.571823Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    /// Lines formatted by `fields` (without colours) for a few events.
    fn formatted<F>(fields: F) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let error = std::io::Error::other("gone");
            tracing::info!(
                tenant = "b0f1a3c2-7d4e",
                r#type = "call_tool",
                quoted = "a \"b\" \\ c",
                tab = "a\tb",
                unicode = "café",
                app_only = false,
                errors = 0_usize,
                delta = -3_i64,
                policies = %"admin-tier,x",
                obligations = %"",
                debug = ?Some(1),
                error = &error as &(dyn std::error::Error + 'static),
                "audited {}", 1
            );
            tracing::warn!(target: "idguard::x", "only a message \u{1b}[31m");
            tracing::info!(n = 1_u64, "");
        });
        let out = out.lock().unwrap();
        String::from_utf8(out.clone()).unwrap()
    }

    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_fields_are_written_as_the_default_formatter_writes_them() {
        let ours = formatted(WithRequestId::default());
        assert_eq!(ours, formatted(DefaultFields::new()));
        assert!(
            ours.contains("tenant=\"b0f1a3c2-7d4e\" type=\"call_tool\""),
            "{ours}"
        );
    }

    #[test]
    fn only_a_usable_caller_id_is_kept() {
        let with = |v: &[u8]| {
            let mut req = Request::new(axum::body::Body::empty());
            req.headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
            from_caller(&req).map(|id| id.to_string())
        };
        assert_eq!(with(b"abc-123").as_deref(), Some("abc-123"));
        assert_eq!(with(b""), None);
        assert_eq!(with(b"a b"), None);
        assert_eq!(with(&[b'a'; 129]), None);
        assert_eq!(with(&[0xe9]), None);
    }
}
