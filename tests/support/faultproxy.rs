//! A fault-injecting HTTP/1.1 proxy for the S3 tests: it sits between a client (`storage`,
//! `backup-runner`) and a real server (Garage), forwards bytes both ways, and on the requests
//! that a [`Rule`] picks (the Nth one, those matching a method and a substring of the path and
//! query) injects a [`Fault`]: an HTTP error answer, a connection reset in the middle of a
//! body, a stall, or a pause during which the test acts on the server (stops and restarts it).
//!
//! One thread per client connection, each with its own connection to the server, opened on the
//! first request; requests on a connection are handled one after the other (HTTP/1.1 without
//! pipelining, as hyper sends them). Bodies are framed by Content-Length or chunked encoding
//! and forwarded as they come, so the proxy knows where each request and answer ends. When the
//! server cannot be reached (stopped), the client's connection is reset, as a connection to a
//! stopped server would be.
//!
//! ```no_run
//! use nc_backup_e2e::faultproxy::{Fault, FaultProxy, Rule};
//! let proxy = FaultProxy::start("127.0.0.1:39000");
//! // The 2nd upload of a part answers 503 (the client retries it).
//! let id = proxy.add(Rule::new(Fault::Status(503)).method("PUT").target("partNumber=").nth(2));
//! // ... run storage with --ENDPOINT_URL proxy.url() ...
//! assert_eq!(proxy.injected(id), 1);
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What happens to a request a rule picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status (500, 503…) with an S3 error document instead of forwarding: the
    /// request (its body read and dropped) never reaches the server. 503 says `SlowDown`, as
    /// S3 does, 500 `InternalError`, 403 `AccessDenied` (not retried by clients).
    Status(u16),
    /// Forward the request's head and this many bytes of its body, then reset both connections
    /// (SO_LINGER 0: the client gets a TCP RST, the server a request cut short).
    ResetRequestBody(u64),
    /// Forward the request, then the answer's head and this many bytes of its body, then reset
    /// the client's connection.
    ResetResponseBody(u64),
    /// Stop forwarding: the request is not passed on and nothing is answered; its connection
    /// is held open, unread, until the proxy is dropped (the client must time out).
    Stall,
    /// Forward the request, then the answer's head and this many bytes of its body, then stop
    /// forwarding (held open, as [`Fault::Stall`]).
    StallResponseBody(u64),
    /// Hold the request until [`FaultProxy::release`], then forward it. When the server was
    /// restarted meanwhile, the proxy's connection to it is broken and the client's is reset,
    /// as with a direct connection to a restarted server (the client retries on a new one).
    Pause,
    /// Forward the request's head and this many bytes of its body (which must have a
    /// Content-Length), hold the rest until [`FaultProxy::release`], then go on: a request in
    /// flight while the test restarts the server (its connection to the server is then broken:
    /// the client's is reset).
    PauseRequestBody(u64),
}

/// Which requests get a fault: those matching the method and every target substring; of
/// those, the ones from the Nth on, so many times (default: the first matching request only).
#[derive(Debug, Clone)]
pub struct Rule {
    method: Option<String>,
    target: Vec<String>,
    skip: u64,
    times: Option<u64>,
    fault: Fault,
}

impl Rule {
    /// Every request matches until narrowed; the fault is injected once.
    pub fn new(fault: Fault) -> Self {
        Rule { method: None, target: Vec::new(), skip: 0, times: Some(1), fault }
    }
    /// Only requests with this method (`PUT`, `POST`, `GET`…).
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_ascii_uppercase());
        self
    }
    /// Only requests whose target (path and query, as sent) contains `s`; may be repeated.
    pub fn target(mut self, s: &str) -> Self {
        self.target.push(s.to_owned());
        self
    }
    /// Starting with the `n`th matching request (1-based), once (see [`Rule::times`]).
    pub fn nth(mut self, n: u64) -> Self {
        assert!(n >= 1, "requests count from 1");
        self.skip = n - 1;
        self
    }
    /// On this many matching requests (from the one [`Rule::nth`] names), then never again.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }
    /// On every matching request (from the one [`Rule::nth`] names), until removed.
    pub fn always(mut self) -> Self {
        self.times = None;
        self
    }
    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && self.target.iter().all(|t| target.contains(t.as_str()))
    }
}

/// A rule's handle, to ask how often it struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

/// One request the proxy saw, and the fault it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub fault: Option<Fault>,
}

#[derive(Debug)]
struct RuleState {
    rule: Rule,
    matched: u64,
    injected: u64,
    active: bool,
}

/// Paused requests: those waiting since the last release, and how many releases there were.
#[derive(Debug, Default)]
struct PauseState {
    waiting: usize,
    releases: u64,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// A handle on every connection to the server, for [`FaultProxy::sever`].
    upstreams: Mutex<Vec<TcpStream>>,
    rules: Mutex<Vec<RuleState>>,
    seen: Mutex<Vec<Seen>>,
    pause: Mutex<PauseState>,
    pause_cv: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// The fault for this request, if a rule picks it; every matching rule counts it.
    fn choose(&self, method: &str, target: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let mut chosen = None;
        for r in rules.iter_mut().filter(|r| r.active && r.rule.matches(method, target)) {
            r.matched += 1;
            let due = r.matched > r.rule.skip && r.rule.times.is_none_or(|t| r.injected < t);
            if due && chosen.is_none() {
                r.injected += 1;
                chosen = Some(r.rule.fault);
            }
        }
        drop(rules);
        self.seen.lock().unwrap().push(Seen { method: method.to_owned(), target: target.to_owned(), fault: chosen });
        chosen
    }

    /// Blocks a paused request until released (or the proxy stops).
    fn pause(&self) {
        let mut p = self.pause.lock().unwrap();
        let mine = p.releases;
        p.waiting += 1;
        self.pause_cv.notify_all();
        while p.releases == mine && !self.stop.load(Ordering::SeqCst) {
            p = self.pause_cv.wait_timeout(p, Duration::from_millis(100)).unwrap().0;
        }
    }

    /// Keeps a stalled connection open, forwarding nothing, until the proxy stops.
    fn hold(&self, _conns: (Option<TcpStream>, Option<TcpStream>)) {
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The proxy; dropped, it stops accepting and lets go of every stalled connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`127.0.0.1:39000`, or an
    /// `http://host:port` URL).
    pub fn start(upstream: &str) -> Self {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream = hostport.to_socket_addrs().unwrap().next().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            pause: Mutex::new(PauseState::default()),
            pause_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            upstreams: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("faultproxy-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = Arc::clone(&s);
                    let _ = std::thread::Builder::new().name("faultproxy-conn".into()).spawn(move || serve(&s, conn));
                }
            })
            .unwrap();
        FaultProxy { addr, shared, accept: Some(accept) }
    }

    /// `http://127.0.0.1:PORT`, for ENDPOINT_URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule (rules are tried in the order they were added; one fault per request).
    pub fn add(&self, rule: Rule) -> RuleId {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.push(RuleState { rule, matched: 0, injected: 0, active: true });
        RuleId(rules.len() - 1)
    }

    /// How many requests this rule injected its fault into.
    pub fn injected(&self, id: RuleId) -> u64 {
        self.shared.rules.lock().unwrap()[id.0].injected
    }

    /// Stops every rule: from now on the proxy only forwards (counts stay readable).
    pub fn clear(&self) {
        for r in self.shared.rules.lock().unwrap().iter_mut() {
            r.active = false;
        }
    }

    /// Every request seen so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Waits until a request is held by [`Fault::Pause`] (since the last release); false if none
    /// came within `limit`.
    pub fn wait_paused(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut p = self.shared.pause.lock().unwrap();
        while p.waiting == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self.shared.pause_cv.wait_timeout(p, left).unwrap().0;
        }
        true
    }

    /// Shuts every connection to the server down, as a server going down does (a request in
    /// flight to it is cut; Garage, stopped while a request is in flight, waits 10 s for it). The
    /// client's connections stay: a request on one, or a paused one going on, finds its
    /// connection to the server broken, and the client's is reset.
    pub fn sever(&self) {
        for s in self.shared.upstreams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Lets the paused requests go on (a request paused later waits for the next release).
    pub fn release(&self) {
        let mut p = self.shared.pause.lock().unwrap();
        p.releases += 1;
        p.waiting = 0;
        self.shared.pause_cv.notify_all();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.pause_cv.notify_all();
        // Wakes the accept loop up so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Closes the connection with a TCP RST instead of a FIN: SO_LINGER on, with a zero timeout,
/// then close. (std's `TcpStream::set_linger` is unstable; the root package has no libc, and
/// std links it anyway.)
#[allow(unsafe_code)]
pub fn reset(stream: TcpStream) {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    unsafe extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
    }
    // Linux's values (asm-generic, x86 and arm alike).
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let linger = Linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor is open (owned by `stream` until the drop below), and the pointer
    // and length describe a valid `struct linger` that outlives the call.
    let rc = unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<Linger>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
    drop(stream);
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (an answer with neither length nor chunks).
    Close,
}

/// A request or answer head: its start line, its raw bytes, and how its body is framed.
#[derive(Debug)]
struct Head {
    raw: Vec<u8>,
    start: String,
    framing: Framing,
    close: bool,
}

/// Reads a head up to its blank line; None on a clean end of stream before any byte.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "head cut short"))
            };
        }
        if raw[before..] == *b"\r\n" || raw[before..] == *b"\n" {
            break;
        }
        if raw.len() > 256 << 10 {
            return Err(std::io::Error::other("head over 256 KiB"));
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let start = lines.next().unwrap_or("").to_owned();
    let (mut framing, mut close) = (None, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" if framing.is_none() => {
                framing = Some(Framing::Length(v.parse().map_err(|_| std::io::Error::other("bad Content-Length"))?));
            }
            "transfer-encoding" if v.contains("chunked") => framing = Some(Framing::Chunked),
            "connection" if v.contains("close") => close = true,
            _ => {}
        }
    }
    Ok(Some(Head { raw, start, framing: framing.unwrap_or(Framing::None), close }))
}

/// Copies `n` raw bytes (until EOF when None), at most `left` of them (decremented); false
/// when `left` ran out first.
fn copy_raw(
    from: &mut BufReader<TcpStream>,
    to: Option<&TcpStream>,
    n: Option<u64>,
    left: &mut u64,
) -> std::io::Result<bool> {
    let mut todo = n.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; 64 << 10];
    while todo > 0 {
        if *left == 0 {
            return Ok(false);
        }
        let want = usize::try_from(todo.min(*left).min(buf.len() as u64)).unwrap();
        let got = from.read(&mut buf[..want])?;
        if got == 0 {
            if n.is_none() {
                return Ok(true);
            }
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "body cut short"));
        }
        if let Some(mut t) = to {
            t.write_all(&buf[..got])?;
        }
        todo -= got as u64;
        *left -= got as u64;
    }
    Ok(true)
}

/// Reads one line (chunk size, trailer) and passes it on.
fn copy_line(from: &mut BufReader<TcpStream>, to: Option<&TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if from.read_until(b'\n', &mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "chunked body cut short"));
    }
    if let Some(mut t) = to {
        t.write_all(&line)?;
    }
    Ok(line)
}

/// Copies a body as framed (to nowhere when `to` is None), at most `limit` bytes of it
/// (counting the chunked encoding as sent); false when it stopped at the limit.
fn copy_body(
    from: &mut BufReader<TcpStream>,
    to: Option<&TcpStream>,
    framing: Framing,
    limit: Option<u64>,
) -> std::io::Result<bool> {
    let mut left = limit.unwrap_or(u64::MAX);
    let whole = match framing {
        Framing::None => true,
        Framing::Length(n) => copy_raw(from, to, Some(n), &mut left)?,
        Framing::Close => copy_raw(from, to, None, &mut left)?,
        Framing::Chunked => loop {
            // A chunk's size line is passed on whole, even past the limit.
            let line = copy_line(from, to)?;
            left = left.saturating_sub(line.len() as u64);
            let text = String::from_utf8_lossy(&line);
            let size = u64::from_str_radix(text.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !matches!(copy_line(from, to)?.as_slice(), b"\r\n" | b"\n") {}
                break true;
            }
            // The chunk's data and its CRLF.
            if !copy_raw(from, to, Some(size + 2), &mut left)? {
                break false;
            }
        },
    };
    if let Some(mut t) = to {
        t.flush()?;
    }
    Ok(whole)
}

/// An S3 error document for an injected status.
fn error_answer(status: u16, head_only: bool) -> Vec<u8> {
    let (code, reason) = match status {
        403 => ("AccessDenied", "Forbidden"),
        500 => ("InternalError", "Internal Server Error"),
        502 => ("BadGateway", "Bad Gateway"),
        503 => ("SlowDown", "Service Unavailable"),
        504 => ("GatewayTimeout", "Gateway Timeout"),
        _ => ("InjectedFault", "Injected Fault"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>fault injected by the test proxy</Message><RequestId>faultproxy</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: faultproxy\r\n\r\n",
        if head_only { 0 } else { body.len() }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves one client connection until it closes, a fault ends it, or the server is gone.
fn serve(shared: &Shared, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let mut client = BufReader::with_capacity(64 << 10, client);
    let mut upstream: Option<BufReader<TcpStream>> = None;
    loop {
        let head = match read_head(&mut client) {
            Ok(Some(h)) => h,
            _ => return,
        };
        let mut words = head.start.split_whitespace();
        let (method, target) = (words.next().unwrap_or("").to_owned(), words.next().unwrap_or("").to_owned());
        let fault = shared.choose(&method, &target);
        match fault {
            Some(Fault::Status(status)) => {
                if copy_body(&mut client, None, head.framing, None).is_err() {
                    return;
                }
                let answer = error_answer(status, method == "HEAD");
                if client.get_ref().write_all(&answer).is_err() || head.close {
                    return;
                }
                continue;
            }
            Some(Fault::Stall) => {
                shared.hold((Some(client.into_inner()), upstream.map(BufReader::into_inner)));
                return;
            }
            Some(Fault::Pause) => shared.pause(),
            _ => {}
        }
        if upstream.is_none() {
            match TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    if let Ok(handle) = s.try_clone() {
                        shared.upstreams.lock().unwrap().push(handle);
                    }
                    upstream = Some(BufReader::with_capacity(64 << 10, s));
                }
                // The server is down: the client sees its connection reset.
                Err(_) => return reset(client.into_inner()),
            }
        }
        let up = upstream.as_mut().unwrap();
        // The request: its head, then its body (cut short for ResetRequestBody).
        let limit = match fault {
            Some(Fault::ResetRequestBody(k) | Fault::PauseRequestBody(k)) => Some(k),
            _ => None,
        };
        let mut sent = up
            .get_ref()
            .write_all(&head.raw)
            .and_then(|()| copy_body(&mut client, Some(up.get_ref()), head.framing, limit));
        if let (Some(Fault::PauseRequestBody(k)), Ok(false)) = (fault, &sent) {
            shared.pause();
            let Framing::Length(n) = head.framing else { panic!("PauseRequestBody needs a Content-Length body") };
            let mut no_limit = u64::MAX;
            sent = copy_raw(&mut client, Some(up.get_ref()), Some(n - k), &mut no_limit);
        }
        match sent {
            Ok(true) => {}
            Ok(false) => {
                // Cut at the limit: both sides see a reset.
                reset(upstream.take().unwrap().into_inner());
                return reset(client.into_inner());
            }
            // The server went away (restarted, stopped) or the client did.
            Err(_) => return reset(client.into_inner()),
        }
        // The answer.
        let answer = match read_head(up) {
            Ok(Some(h)) => h,
            _ => return reset(client.into_inner()),
        };
        let status: u16 = answer.start.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let framing = if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if answer.framing == Framing::None {
            Framing::Close
        } else {
            answer.framing
        };
        if client.get_ref().write_all(&answer.raw).is_err() {
            return;
        }
        let limit = match fault {
            Some(Fault::ResetResponseBody(k) | Fault::StallResponseBody(k)) => Some(k),
            _ => None,
        };
        match copy_body(up, Some(client.get_ref()), framing, limit) {
            Ok(true) => {}
            Ok(false) if matches!(fault, Some(Fault::StallResponseBody(_))) => {
                shared.hold((Some(client.into_inner()), upstream.map(BufReader::into_inner)));
                return;
            }
            Ok(false) => {
                let _ = upstream.take().map(|u| u.into_inner().shutdown(Shutdown::Both));
                return reset(client.into_inner());
            }
            Err(_) => return reset(client.into_inner()),
        }
        if head.close || answer.close || framing == Framing::Close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny HTTP/1.1 server: `GET /len/N` answers N bytes, `GET /chunked` a chunked body,
    /// `PUT` the length of the body it got. Counts the requests it answered.
    fn upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c);
                    while let Ok(Some(h)) = read_head(&mut r) {
                        let mut body = Vec::new();
                        if let Framing::Length(n) = h.framing {
                            body.resize(usize::try_from(n).unwrap(), 0);
                            if r.read_exact(&mut body).is_err() {
                                g.lock().unwrap().push(format!("{} cut", h.start));
                                return;
                            }
                        }
                        g.lock().unwrap().push(h.start.clone());
                        let target = h.start.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let answer = if let Some(n) = target.strip_prefix("/len/") {
                            let n: usize = n.split('?').next().unwrap().parse().unwrap();
                            let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
                            a.extend(std::iter::repeat_n(b'x', n));
                            a
                        } else if target == "/chunked" {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()
                        } else {
                            let text = body.len().to_string();
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len()).into_bytes()
                        };
                        if r.get_ref().write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, got)
    }

    struct Client(BufReader<TcpStream>);

    impl Client {
        fn new(p: &FaultProxy) -> Self {
            let s = TcpStream::connect(p.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Client(BufReader::new(s))
        }
        fn send(&mut self, method: &str, target: &str, body: &[u8]) -> std::io::Result<()> {
            let head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
            self.0.get_ref().write_all(head.as_bytes())?;
            self.0.get_ref().write_all(body)
        }
        /// (status, body); the body read whole, or an error (reset, timeout).
        fn answer(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
            let h = read_head(&mut self.0)?.ok_or_else(|| std::io::Error::other("closed"))?;
            let status = h.start.split_whitespace().nth(1).unwrap().parse().unwrap();
            let mut body = Vec::new();
            match h.framing {
                Framing::Length(n) => {
                    body.resize(usize::try_from(n).unwrap(), 0);
                    self.0.read_exact(&mut body)?;
                }
                Framing::Chunked => loop {
                    let mut line = String::new();
                    self.0.read_line(&mut line)?;
                    let n = usize::from_str_radix(line.trim(), 16).unwrap();
                    let mut chunk = vec![0; n + 2];
                    self.0.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                },
                _ => {}
            }
            Ok((status, body))
        }
        fn call(&mut self, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
            self.send(method, target, body)?;
            self.answer()
        }
    }

    #[test]
    fn forwards_both_ways_on_one_connection() {
        let (up, got) = upstream();
        let p = FaultProxy::start(&up.to_string());
        let mut c = Client::new(&p);
        assert_eq!(c.call("GET", "/len/300000", b"").unwrap(), (200, vec![b'x'; 300_000]));
        assert_eq!(c.call("PUT", "/k", &vec![7; 1 << 20]).unwrap(), (200, b"1048576".to_vec()));
        assert_eq!(c.call("GET", "/chunked", b"").unwrap(), (200, b"hello world".to_vec()));
        assert_eq!(got.lock().unwrap().len(), 3);
        assert!(p.seen().iter().all(|s| s.fault.is_none()));
    }

    #[test]
    fn status_answers_the_nth_matching_request_without_forwarding() {
        let (up, got) = upstream();
        let p = FaultProxy::start(&up.to_string());
        let id = p.add(Rule::new(Fault::Status(503)).method("PUT").target("part").nth(2).times(2));
        let mut c = Client::new(&p);
        assert_eq!(c.call("PUT", "/k?part=1", b"abc").unwrap().0, 200);
        assert_eq!(c.call("GET", "/len/1?part=2", b"").unwrap().0, 200, "another method");
        let (status, body) = c.call("PUT", "/k?part=2", b"abc").unwrap();
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("<Code>SlowDown</Code>"));
        assert_eq!(c.call("PUT", "/k?part=3", b"abc").unwrap().0, 503);
        assert_eq!(c.call("PUT", "/k?part=4", b"abcd").unwrap(), (200, b"4".to_vec()));
        assert_eq!(p.injected(id), 2);
        assert_eq!(got.lock().unwrap().len(), 3, "answered requests reached the server");
    }

    #[test]
    fn reset_in_the_answer_body_and_in_the_request_body() {
        let (up, got) = upstream();
        let p = FaultProxy::start(&up.to_string());
        p.add(Rule::new(Fault::ResetResponseBody(1000)).target("/len/"));
        p.add(Rule::new(Fault::ResetResponseBody(8)).target("/chunked"));
        p.add(Rule::new(Fault::ResetRequestBody(4096)).method("PUT"));
        let mut c = Client::new(&p);
        c.send("GET", "/len/100000", b"").unwrap();
        let e = c.answer().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        let mut c = Client::new(&p);
        assert_eq!(c.call("GET", "/chunked", b"").unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
        let mut c = Client::new(&p);
        let e = c.call("PUT", "/k", &vec![1; 1 << 20]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        // Faults spent: the same requests pass.
        let mut c = Client::new(&p);
        assert_eq!(c.call("GET", "/len/100000", b"").unwrap().1.len(), 100_000);
        assert_eq!(c.call("PUT", "/k", &vec![1; 1 << 20]).unwrap().1, b"1048576");
        // The server got the cut PUT's body short (or, the reset discarding what it had not
        // read yet, nothing at all): one whole PUT only, the second.
        let whole = got.lock().unwrap().iter().filter(|g| *g == "PUT /k HTTP/1.1").count();
        assert_eq!(whole, 1, "{got:?}");
    }

    #[test]
    fn stalls_until_the_client_gives_up() {
        let (up, got) = upstream();
        let p = FaultProxy::start(&up.to_string());
        p.add(Rule::new(Fault::Stall).target("/len/1"));
        p.add(Rule::new(Fault::StallResponseBody(500)).target("/len/2"));
        for (target, sent) in [("/len/1", 0), ("/len/2000", 1)] {
            let mut c = Client::new(&p);
            c.0.get_ref().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let e = c.call("GET", target, b"").unwrap_err();
            assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}");
            assert_eq!(got.lock().unwrap().len(), sent, "{target}");
        }
    }

    #[test]
    fn pause_in_a_request_body_until_released() {
        let (up, got) = upstream();
        let p = FaultProxy::start(&up.to_string());
        p.add(Rule::new(Fault::PauseRequestBody(1000)).method("PUT"));
        let addr = p.addr();
        let t = std::thread::spawn(move || {
            let mut c = Client(BufReader::new(TcpStream::connect(addr).unwrap()));
            c.call("PUT", "/k", &vec![3; 300_000]).unwrap()
        });
        assert!(p.wait_paused(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(got.lock().unwrap().is_empty(), "the server got the whole body of a paused request");
        p.release();
        assert_eq!(t.join().unwrap(), (200, b"300000".to_vec()));
    }

    #[test]
    fn pause_until_released_and_a_stopped_server_resets() {
        let (up, got) = upstream();
        let p = FaultProxy::start(&up.to_string());
        p.add(Rule::new(Fault::Pause).always());
        let addr = p.addr();
        let t = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            let mut c = Client(BufReader::new(s));
            c.call("GET", "/len/3", b"").unwrap()
        });
        assert!(p.wait_paused(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(got.lock().unwrap().is_empty(), "a paused request was forwarded");
        p.release();
        assert_eq!(t.join().unwrap(), (200, b"xxx".to_vec()));
        assert!(!p.wait_paused(Duration::from_millis(50)), "released pauses count again");
        drop(p);
        // Nothing listens on the upstream address: the client's connection is reset.
        let gone = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = FaultProxy::start(&gone.local_addr().unwrap().to_string());
        drop(gone);
        let e = Client::new(&p).call("GET", "/len/3", b"").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
}
