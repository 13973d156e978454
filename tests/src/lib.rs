//! Shared fixture for ctscope's end-to-end tests.
//!
//! Every test makes its own network namespace (`ctscope-t-<pid>-<n>`), fills
//! its conntrack table with real traffic and `conntrack -I` entries, and runs
//! `ctscope` and the reference `conntrack` (1.4.7) in that namespace with the
//! same arguments.
//!
//! Needs: root (namespaces, nftables, ctnetlink), `ip`, `nft`, `sysctl`,
//! `conntrack`, `setpriv`, and a built ctscope, taken from `CTSCOPE_BIN` or
//! else `<workspace>/target/debug/ctscope` (`cargo build -p conntrack-user`).
//!
//! Switch: `CTSCOPE_SKIP_NETNS=1` turns these tests off (for machines where
//! they cannot run, e.g. without root). Each test then prints that it was
//! skipped by that switch and passes. Without the switch, a test that cannot
//! run fails and says why.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// The environment variable that turns every namespace test off.
pub const SKIP_SWITCH: &str = "CTSCOPE_SKIP_NETNS";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `128 + signal` when killed by a signal.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}  (exit {})", self.command, self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

impl Output {
    /// Panics (showing the whole output) unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }

    /// The non-empty stdout lines.
    pub fn lines(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The N of "N flow entries have been <verb>." on stderr.
    pub fn entries_reported(&self, verb: &str) -> Option<u64> {
        let needle = format!(" flow entries have been {verb}.");
        self.stderr.lines().find_map(|l| {
            let head = &l[..l.find(&needle)?];
            let digits: String = head
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits.parse().ok()
        })
    }

    /// The N of "N flow events have been shown." on stderr (`-E`).
    pub fn events_shown(&self) -> Option<u64> {
        let needle = " flow events have been shown.";
        self.stderr.lines().find_map(|l| {
            let head = &l[..l.find(needle)?];
            let start = head
                .rfind(|c: char| !c.is_ascii_digit())
                .map_or(0, |i| i + 1);
            head[start..].parse().ok()
        })
    }

    /// Panics if the stderr shows a Rust panic.
    #[track_caller]
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the program panicked\n{self}"
        );
        self
    }
}

/// Runs a command to completion and captures everything.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run `{command}`: {e} (is the tool installed?)"),
    };
    let code = match out.status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + out.status.signal().unwrap_or(0)
        }
    };
    Output {
        command,
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `argv` in the host namespace.
#[track_caller]
pub fn host(argv: &[&str]) -> Output {
    let (prog, rest) = argv.split_first().expect("empty argv");
    run(Command::new(prog).args(rest))
}

/// The ctscope binary under test.
pub fn ctscope_bin() -> PathBuf {
    let path = match std::env::var_os("CTSCOPE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .join("target/debug/ctscope"),
    };
    assert!(
        path.is_file(),
        "ctscope binary not found at {}: build ctscope first: cargo build -p conntrack-user \
         (or point CTSCOPE_BIN at it)",
        path.display()
    );
    path
}

/// True when the documented switch turns the namespace tests off; prints why.
fn skipped() -> bool {
    if std::env::var(SKIP_SWITCH).is_ok_and(|v| v == "1") {
        let test = thread::current().name().unwrap_or("this test").to_string();
        eprintln!("{test}: skipped by {SKIP_SWITCH}=1");
        return true;
    }
    false
}

/// Tracking on in both directions, so locally made traffic gets entries.
const BASE_RULESET: &str = "
table inet ctscope_track {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state new counter
    }
    chain output {
        type filter hook output priority filter; policy accept;
        ct state new counter
    }
}
";

/// Timeouts long enough that nothing expires or changes state mid-test.
const SYSCTLS: &[&str] = &[
    "net.netfilter.nf_conntrack_acct=1",
    "net.netfilter.nf_conntrack_timestamp=1",
    "net.netfilter.nf_conntrack_udp_timeout=3600",
    "net.netfilter.nf_conntrack_udp_timeout_stream=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_syn_sent=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_syn_recv=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_close=3600",
    // A SYN that is never answered moves to the max_retrans timeout.
    "net.netfilter.nf_conntrack_tcp_timeout_max_retrans=3600",
    "net.netfilter.nf_conntrack_tcp_timeout_unacknowledged=3600",
    "net.netfilter.nf_conntrack_icmp_timeout=3600",
    "net.netfilter.nf_conntrack_icmpv6_timeout=3600",
    "net.netfilter.nf_conntrack_gre_timeout=3600",
    "net.netfilter.nf_conntrack_gre_timeout_stream=3600",
    "net.netfilter.nf_conntrack_generic_timeout=3600",
    "net.netfilter.nf_conntrack_sctp_timeout_established=3600",
    // Lets the traffic thread use unprivileged ICMP echo sockets.
    "net.ipv4.ping_group_range=0 2147483647",
];

/// A network namespace made for one test, removed on drop.
pub struct Netns {
    name: String,
    /// Sockets that keep the table's flows in their states.
    keep: Vec<Box<dyn Send>>,
}

impl Netns {
    /// A fresh namespace with lo up, tracking on, accounting and timestamps
    /// on. `None` when the skip switch is set.
    pub fn new() -> Option<Self> {
        if skipped() {
            return None;
        }
        assert!(
            nix::unistd::geteuid().is_root(),
            "ctscope's end-to-end tests need root (network namespaces, nftables, ctnetlink); \
             run them as root, or set {SKIP_SWITCH}=1 to skip them"
        );
        let name = format!(
            "ctscope-t-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        host(&["ip", "netns", "add", &name]).expect_code(0);
        // From here on, Drop removes the namespace even if set-up fails.
        let ns = Netns {
            name,
            keep: Vec::new(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]).expect_code(0);
        ns.nft(BASE_RULESET);
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend_from_slice(SYSCTLS);
        ns.exec(&argv).expect_code(0);
        Some(ns)
    }

    /// A fresh namespace holding [`Netns::fill_varied_table`]'s entries.
    pub fn with_varied_table() -> Option<Self> {
        let mut ns = Self::new()?;
        ns.fill_varied_table();
        Some(ns)
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, for setns.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `argv` inside the namespace (`ip netns exec`).
    #[track_caller]
    pub fn exec(&self, argv: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// `conntrack ARGS` inside the namespace.
    #[track_caller]
    pub fn conntrack(&self, args: &[&str]) -> Output {
        let mut argv = vec!["conntrack"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// `ctscope ARGS` inside the namespace (via `ip netns exec`).
    #[track_caller]
    pub fn ctscope(&self, args: &[&str]) -> Output {
        let bin = ctscope_bin();
        let bin = bin.to_str().expect("utf-8 path");
        let mut argv = vec![bin];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// Loads an nftables script into the namespace.
    #[track_caller]
    pub fn nft(&self, script: &str) {
        let path = std::env::temp_dir().join(format!(
            "{}-{}.nft",
            self.name,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, script).expect("write nft script");
        let out = self.exec(&["nft", "-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
        out.expect_code(0);
    }

    /// Starts `argv` inside the namespace (`ip netns exec`, which execs, so
    /// the child's pid is the program's), its output going to files.
    #[track_caller]
    pub fn spawn(&self, argv: &[&str]) -> Background {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("{}-{n}", self.name));
        let stdout_path = base.with_extension("out");
        let stderr_path = base.with_extension("err");
        let create = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path));
        let command = argv.join(" ");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        Background {
            command,
            child,
            stdout_path,
            stderr_path,
            started: Instant::now(),
            status: None,
        }
    }

    /// Starts `ctscope ARGS` inside the namespace.
    #[track_caller]
    pub fn spawn_ctscope(&self, args: &[&str]) -> Background {
        let bin = ctscope_bin();
        let bin = bin.to_str().expect("utf-8 path");
        let mut argv = vec![bin];
        argv.extend_from_slice(args);
        self.spawn(&argv)
    }

    /// Starts `conntrack ARGS` inside the namespace.
    #[track_caller]
    pub fn spawn_conntrack(&self, args: &[&str]) -> Background {
        let mut argv = vec!["conntrack"];
        argv.extend_from_slice(args);
        self.spawn(&argv)
    }

    /// How many ctnetlink sockets in the namespace have joined a multicast
    /// group, i.e. how many event listeners are subscribed.
    pub fn event_listeners(&self) -> usize {
        // /proc/thread-self/net follows the thread's namespace, /proc/self/net
        // the thread group leader's (which stays on the host).
        let table = self.in_netns(|| std::fs::read_to_string("/proc/thread-self/net/netlink"));
        let table = table.unwrap_or_else(|e| panic!("read /proc/thread-self/net/netlink: {e}"));
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // Columns: sk Eth Pid Groups ...; NETLINK_NETFILTER is 12.
                f.get(1) == Some(&"12") && f.get(3).is_some_and(|g| !g.trim_matches('0').is_empty())
            })
            .count()
    }

    /// Waits (polling, up to 5 s) until at least `n` event listeners are
    /// subscribed in the namespace; says how many there were if not.
    pub fn wait_for_listeners(&self, n: usize) -> Result<(), String> {
        let mut seen = 0;
        if poll_until(Duration::from_secs(5), || {
            seen = self.event_listeners();
            seen >= n
        }) {
            Ok(())
        } else {
            Err(format!(
                "only {seen} of {n} ctnetlink event listeners subscribed after 5 s"
            ))
        }
    }

    /// Runs `f` on a thread that has joined this namespace (setns affects
    /// only the calling thread, so the test's own threads stay on the host).
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        thread::scope(|s| {
            s.spawn(move || {
                let file =
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                f()
            })
            .join()
            .expect("thread inside the namespace panicked")
        })
    }

    /// Fills the table with a varied set of entries, from real sockets and
    /// from `conntrack -I`; see [`VARIED_RULESET`] and [`INSERTED`].
    pub fn fill_varied_table(&mut self) {
        self.nft(VARIED_RULESET);
        let kept = self.in_netns(make_traffic);
        self.keep.push(Box::new(kept));
        for args in INSERTED {
            let mut argv = vec!["-I"];
            argv.extend_from_slice(args);
            argv.extend_from_slice(&["-t", "3600"]);
            self.conntrack(&argv).expect_code(0);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.keep.clear();
        let out = host(&["ip", "netns", "del", &self.name]);
        if out.code != 0 {
            eprintln!("warning: could not delete namespace {}:\n{out}", self.name);
        }
    }
}

/// The rules behind the varied table: zones, marks, a dropped port (for
/// SYN_SENT), DNAT and SNAT.
pub const VARIED_RULESET: &str = "
table inet ctscope_vary {
    chain raw_out {
        type filter hook output priority raw; policy accept;
        udp dport 6000 ct zone set 7
        udp sport 6000 ct zone set 7
        udp dport 6003 ct original zone set 8
    }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 9 drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
        udp dport 6001 meta mark set 0x2a ct mark set meta mark
        udp dport 6002 ct mark set 0x1234
    }
}
table ip ctscope_nat {
    chain out {
        type nat hook output priority -100; policy accept;
        udp dport 5000 dnat to 127.0.0.2:5001
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        udp dport 5002 snat to 127.0.0.3
    }
}
";

/// Entries added with `conntrack -I ... -t 3600`: protocols, states, marks,
/// zones and status bits that local traffic does not easily give.
pub const INSERTED: &[&[&str]] = &[
    &[
        "-p",
        "sctp",
        "-s",
        "10.0.0.1",
        "-d",
        "10.0.0.2",
        "--sport",
        "1000",
        "--dport",
        "2000",
        "--orig-vtag",
        "1",
        "--reply-vtag",
        "2",
        "--state",
        "ESTABLISHED",
        "-u",
        "SEEN_REPLY",
    ],
    // Linux 6.16 removed DCCP tracking: the kernel keeps this as a generic
    // protocol-33 entry without ports, and conntrack prints sport=0 dport=0.
    &[
        "-p", "dccp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1000", "--dport", "2000",
        "--state", "OPEN", "--role", "client",
    ],
    &[
        "-p", "gre", "-s", "10.0.0.1", "-d", "10.0.0.2", "--srckey", "1", "--dstkey", "2",
    ],
    &[
        "-p",
        "icmp",
        "-s",
        "10.0.0.1",
        "-d",
        "10.0.0.2",
        "--icmp-type",
        "8",
        "--icmp-code",
        "0",
        "--icmp-id",
        "77",
    ],
    &[
        "-p",
        "icmp",
        "-s",
        "10.0.0.1",
        "-d",
        "10.0.0.3",
        "--icmp-type",
        "13",
        "--icmp-code",
        "0",
        "--icmp-id",
        "78",
    ],
    &[
        "-p",
        "icmpv6",
        "-s",
        "2001:db8::1",
        "-d",
        "2001:db8::2",
        "--icmpv6-type",
        "128",
        "--icmpv6-code",
        "0",
        "--icmpv6-id",
        "79",
    ],
    &[
        "-p",
        "tcp",
        "-s",
        "2001:db8::1",
        "-d",
        "2001:db8::2",
        "--sport",
        "1234",
        "--dport",
        "80",
        "--state",
        "ESTABLISHED",
        "-u",
        "ASSURED",
        "-m",
        "99",
    ],
    &[
        "-p", "tcp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "1234", "--dport", "80",
        "--state", "SYN_RECV", "-w", "5",
    ],
    &[
        "-p",
        "udp",
        "-s",
        "10.1.0.1",
        "-d",
        "10.1.0.2",
        "--sport",
        "53",
        "--dport",
        "53",
        "--orig-zone",
        "3",
    ],
    &[
        "-p",
        "udp",
        "-s",
        "10.1.0.1",
        "-d",
        "10.1.0.2",
        "--sport",
        "54",
        "--dport",
        "53",
        "--reply-zone",
        "4",
    ],
    &[
        "-p", "udp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "56", "--dport", "53", "-m",
        "0x10ff",
    ],
    &[
        "-p", "udplite", "-s", "10.1.0.9", "-d", "10.1.0.8", "--sport", "1", "--dport", "2",
    ],
    &[
        "-p",
        "tcp",
        "-s",
        "10.4.0.1",
        "-d",
        "10.4.0.2",
        "--sport",
        "1111",
        "--dport",
        "22",
        "--state",
        "FIN_WAIT",
        "-u",
        "SEEN_REPLY,ASSURED",
    ],
    &[
        "-p",
        "tcp",
        "-s",
        "10.4.0.1",
        "-d",
        "10.4.0.2",
        "--sport",
        "1112",
        "--dport",
        "22",
        "--state",
        "LAST_ACK",
        "-u",
        "SEEN_REPLY",
    ],
    // A reply tuple that differs from the inverted original, without the
    // NAT status bits: conntrack's -n/-g/-j must not call this NAT.
    &[
        "-p",
        "tcp",
        "-s",
        "10.2.0.1",
        "-d",
        "10.2.0.2",
        "--sport",
        "1",
        "--dport",
        "2",
        "-r",
        "10.2.0.3",
        "-q",
        "10.2.0.1",
        "--reply-port-src",
        "3",
        "--reply-port-dst",
        "1",
        "--state",
        "ESTABLISHED",
    ],
];

/// Sockets kept open so their entries stay as they are.
#[derive(Default)]
pub struct Kept {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpStream>,
    listeners: Vec<TcpListener>,
    fds: Vec<OwnedFd>,
}

impl Kept {
    /// How many sockets are held.
    pub fn len(&self) -> usize {
        self.udp.len() + self.tcp.len() + self.listeners.len() + self.fds.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const WAIT: Duration = Duration::from_secs(3);

fn udp(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
    s
}

/// One datagram from `src` (port 0: any) to `dst`, answered when `reply`;
/// the receiver listens on `listen` (differs from `dst` under DNAT).
fn udp_flow(kept: &mut Kept, src: SocketAddr, dst: SocketAddr, listen: SocketAddr, reply: bool) {
    let server = udp(listen);
    let client = udp(src);
    client
        .send_to(b"ctscope", dst)
        .unwrap_or_else(|e| panic!("send udp {src} -> {dst}: {e}"));
    let mut buf = [0u8; 64];
    let (_, peer) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("recv udp on {listen} (from {src} to {dst}): {e}"));
    if reply {
        server.send_to(b"back", peer).expect("send udp reply");
        client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("recv udp reply {dst} -> {src}: {e}"));
    }
    kept.udp.push(server);
    kept.udp.push(client);
}

fn tcp_pair(addr: SocketAddr) -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen {addr}: {e}"));
    let client = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (server, _) = listener.accept().expect("accept");
    (listener, client, server)
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(a), port))
}

fn v6_lo(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
}

fn settle() {
    thread::sleep(Duration::from_millis(50));
}

/// An ICMP echo through an unprivileged ping socket (the kernel fills in
/// the id and checksum) and its answer.
fn ping(kept: &mut Kept, v6: bool) {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        if v6 {
            libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6)
        } else {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
        }
    };
    assert!(fd >= 0, "ping socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let echo: [u8; 16] = [
        if v6 { 128 } else { 8 },
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        b'c',
        b't',
        b's',
        b'c',
        b'o',
        b'p',
        b'e',
        b'!',
    ];
    // SAFETY: the sockaddr structs are fully initialised and their sizes passed.
    let sent = unsafe {
        if v6 {
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
            libc::sendto(
                fd,
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        } else {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            libc::sendto(
                fd,
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
    };
    assert!(sent > 0, "ping sendto: {}", std::io::Error::last_os_error());
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&raw mut pfd, 1, 3000) };
    assert!(ready == 1, "no ICMP echo reply within 3 s (v6: {v6})");
    // Read the reply: while its skb sits in the queue it holds a reference
    // to the entry (use=2), and a flushed entry stays counted until freed.
    let mut buf = [0u8; 64];
    // SAFETY: buf is valid for buf.len() bytes.
    let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(got > 0, "ping recv: {}", std::io::Error::last_os_error());
    kept.fds.push(owned);
}

/// Real traffic, run on a thread inside the namespace.
fn make_traffic() -> Kept {
    let mut k = Kept::default();
    let lo = [127, 0, 0, 1];
    // UDP, answered and not, v4 and v6, to several 127.x addresses.
    udp_flow(&mut k, v4(lo, 0), v4(lo, 4000), v4(lo, 4000), true);
    udp_flow(
        &mut k,
        v4(lo, 0),
        v4([127, 0, 0, 5], 4001),
        v4([127, 0, 0, 5], 4001),
        false,
    );
    udp_flow(
        &mut k,
        v4(lo, 0),
        v4([127, 0, 0, 7], 4004),
        v4([127, 0, 0, 7], 4004),
        true,
    );
    udp_flow(&mut k, v6_lo(0), v6_lo(4002), v6_lo(4002), true);
    udp_flow(&mut k, v6_lo(0), v6_lo(4003), v6_lo(4003), false);
    // Zones and marks set by the ruleset.
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6000), v4(lo, 6000), true);
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6003), v4(lo, 6003), true);
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6001), v4(lo, 6001), true);
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6002), v4(lo, 6002), true);
    // DNAT 127.0.0.1:5000 -> 127.0.0.2:5001, SNAT to 127.0.0.3.
    udp_flow(
        &mut k,
        v4(lo, 0),
        v4(lo, 5000),
        v4([127, 0, 0, 2], 5001),
        true,
    );
    udp_flow(&mut k, v4(lo, 0), v4(lo, 5002), v4(lo, 5002), true);

    // TCP ESTABLISHED, v4 and v6.
    for addr in [v4(lo, 7000), v6_lo(7003), v4([127, 0, 0, 9], 7004)] {
        let (l, c, s) = tcp_pair(addr);
        k.listeners.push(l);
        k.tcp.push(c);
        k.tcp.push(s);
    }
    // TIME_WAIT: the client closes first, then the server.
    {
        let (l, c, s) = tcp_pair(v4(lo, 7001));
        drop(c);
        settle();
        drop(s);
        settle();
        k.listeners.push(l);
    }
    // CLOSE_WAIT: the client closes, the server stays open.
    {
        let (l, c, s) = tcp_pair(v4(lo, 7002));
        drop(c);
        settle();
        k.listeners.push(l);
        k.tcp.push(s);
    }
    // SYN_SENT [UNREPLIED]: the ruleset drops SYNs to port 9 on input. The
    // SYN leaves during connect(); closing the socket then sends nothing
    // more, so the entry's counters do not move between listings.
    match TcpStream::connect_timeout(&v4(lo, 9), Duration::from_millis(200)) {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => panic!("connect to dropped port 9 should time out, got {other:?}"),
    }
    ping(&mut k, false);
    ping(&mut k, true);
    settle();
    k
}

/// Calls `done` every 10 ms until it returns true (true) or `timeout`
/// passes (false).
pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A program started with [`Netns::spawn`]; killed (SIGKILL) and its output
/// files removed on drop.
pub struct Background {
    command: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
    status: Option<i32>,
}

impl Background {
    /// The program's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Where its stdout goes (for outputs too big to hold as one string).
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Sends `sig` to the program.
    #[track_caller]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("kill -s {sig} {pid} ({}): {e}", self.command));
    }

    /// Whether the program has not exited yet.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                self.status = Some(exit_code(st));
                false
            }
            Err(e) => panic!("wait for `{}`: {e}", self.command),
        }
    }

    /// Its stdout so far.
    pub fn stdout_now(&self) -> String {
        std::fs::read(&self.stdout_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the program to exit by itself; its output
    /// then, or `None` while it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Output> {
        if !poll_until(timeout, || !self.is_running()) {
            return None;
        }
        Some(self.output())
    }

    /// Time since it was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends `sig` and waits up to 5 s for the exit; panics (showing what
    /// it printed) if it does not exit.
    #[track_caller]
    pub fn stop(&mut self, sig: nix::sys::signal::Signal) -> Output {
        if self.is_running() {
            self.signal(sig);
        }
        match self.wait_timeout(Duration::from_secs(5)) {
            Some(out) => out,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` did not exit within 5 s of {sig}\n--- stderr ---\n{}",
                    self.command,
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
        }
    }

    /// What it printed, with its exit code (-1 while it runs).
    fn output(&self) -> Output {
        let read = |p: &Path| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Output {
            command: self.command.clone(),
            code: self.status.unwrap_or(-1),
            stdout: read(&self.stdout_path),
            stderr: read(&self.stderr_path),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stdout_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Exit code; `128 + signal` when killed by a signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// [`normalise`] for a `conntrack -E` line: also drops the padding before
/// the `[NEW]`-style tag and the ` progname=X` that ends `[USERSPACE]` (it is
/// looked up in /proc when the line is printed, so it is there or not
/// depending on whether the program has exited yet); keeps `portid=N`.
pub fn normalise_event(line: &str) -> String {
    let line = line.trim_start();
    let (tag, rest) = match line.find(']') {
        Some(i) if line.starts_with('[') => line.split_at(i + 1),
        _ => ("", line),
    };
    let rest = rest.find(" progname=").map_or(rest, |i| &rest[..i]);
    let body = normalise(rest.trim_start());
    if tag.is_empty() {
        body
    } else {
        format!("{tag} {body}")
    }
}

/// Normalised ([`normalise_event`]), sorted stdout lines of an events run.
pub fn normalised_events(out: &Output) -> Vec<String> {
    let mut v: Vec<String> = out.lines().iter().map(|l| normalise_event(l)).collect();
    v.sort();
    v
}

/// Masks what changes between two listings of the same table: the timeout
/// countdown (the number after the protocol number) and `delta-time=N`.
pub fn normalise(line: &str) -> String {
    let mut tokens: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                tokens.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        tokens.push((s, line.len()));
    }
    let tok = |i: usize| tokens.get(i).map(|&(s, e)| &line[s..e]);
    let extended = matches!(tok(0), Some("ipv4" | "ipv6" | "unknown"));
    let timeout_at = if extended { 4 } else { 2 };
    let mut out = String::with_capacity(line.len());
    let mut last = 0;
    for (i, &(s, e)) in tokens.iter().enumerate() {
        let t = &line[s..e];
        let replacement = if i == timeout_at && t.chars().all(|c| c.is_ascii_digit()) {
            Some("<timeout>")
        } else if t.starts_with("delta-time=") {
            Some("delta-time=<d>")
        } else {
            None
        };
        if let Some(r) = replacement {
            out.push_str(&line[last..s]);
            out.push_str(r);
            last = e;
        }
    }
    out.push_str(&line[last..]);
    out.trim_end().to_string()
}

/// Normalised, sorted stdout lines.
pub fn normalised_lines(out: &Output) -> Vec<String> {
    let mut v: Vec<String> = out.lines().iter().map(|l| normalise(l)).collect();
    v.sort();
    v
}

/// Describes how two multisets of lines differ; `None` when equal.
pub fn multiset_diff(a_name: &str, a: &[String], b_name: &str, b: &[String]) -> Option<String> {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for l in a {
        *count.entry(l).or_default() += 1;
    }
    for l in b {
        *count.entry(l).or_default() -= 1;
    }
    let only_a: Vec<String> = count
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(l, n)| format!("  {n}x {l}"))
        .collect();
    let only_b: Vec<String> = count
        .iter()
        .filter(|&(_, &n)| n < 0)
        .map(|(l, n)| format!("  {}x {l}", -n))
        .collect();
    if only_a.is_empty() && only_b.is_empty() {
        return None;
    }
    Some(format!(
        "{} lines vs {} lines\nonly in {a_name}:\n{}\nonly in {b_name}:\n{}",
        a.len(),
        b.len(),
        only_a.join("\n"),
        only_b.join("\n")
    ))
}

/// Runs `conntrack -L ARGS` and `ctscope list ARGS` in `ns` and explains
/// every difference; returns conntrack's normalised lines when they agree.
pub fn compare_list(ns: &Netns, args: &[&str]) -> Result<Vec<String>, String> {
    let mut ct_args = vec!["-L"];
    ct_args.extend_from_slice(args);
    let ct = ns.conntrack(&ct_args);
    compare_list_to(ns, &ct, args)
}

/// Like [`compare_list`], with conntrack's `-L ARGS` output already at hand.
pub fn compare_list_to(ns: &Netns, ct: &Output, args: &[&str]) -> Result<Vec<String>, String> {
    let mut cs_args = vec!["list"];
    cs_args.extend_from_slice(args);
    let cs = ns.ctscope(&cs_args);
    compare_outputs(ct, &cs, "shown")
}

/// Compares a conntrack run with the matching ctscope run: exit code,
/// normalised stdout multiset, and the "N flow entries have been VERB." count.
pub fn compare_outputs(ct: &Output, cs: &Output, verb: &str) -> Result<Vec<String>, String> {
    if cs.stderr.contains("panicked") {
        return Err(format!("ctscope panicked\n{cs}"));
    }
    if ct.code != cs.code {
        return Err(format!(
            "exit codes differ: conntrack {} vs ctscope {}\n{ct}\n{cs}",
            ct.code, cs.code
        ));
    }
    if ct.code == 2 {
        return Ok(Vec::new());
    }
    let a = normalised_lines(ct);
    let b = normalised_lines(cs);
    if let Some(d) = multiset_diff("conntrack", &a, "ctscope", &b) {
        return Err(format!("`{}` vs `{}`: {d}", ct.command, cs.command));
    }
    let want = ct.entries_reported(verb);
    let got = cs.entries_reported(verb);
    if want.is_some() && want != got {
        return Err(format!(
            "\"N flow entries have been {verb}.\": conntrack says {want:?}, ctscope {got:?}\n\
             conntrack stderr: {}\nctscope stderr: {}",
            ct.stderr.trim_end(),
            cs.stderr.trim_end()
        ));
    }
    Ok(a)
}

/// Panics listing every failure, or does nothing when there are none.
#[track_caller]
pub fn report(total: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Splits a conntrack line into its `key=value` tokens, in order.
pub fn key_values(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .collect()
}

/// `flows` new UDP entries: one datagram per new tuple, round robin over
/// sockets bound to 127.77.0.1-16 (a stand-in for ctchurn). Call it inside
/// the namespace ([`Netns::in_netns`]); returns flows and time taken.
pub fn udp_flows(flows: u64) -> (u64, Duration) {
    let sockets: Vec<UdpSocket> = (1..=16)
        .map(|k| {
            UdpSocket::bind((Ipv4Addr::new(127, 77, 0, k), 0))
                .unwrap_or_else(|e| panic!("bind udp 127.77.0.{k}: {e}"))
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0;
    'ports: for dport in 10_000u16..=u16::MAX {
        for s in &sockets {
            if sent == flows {
                break 'ports;
            }
            s.send_to(b"ctscope", (Ipv4Addr::LOCALHOST, dport))
                .unwrap_or_else(|e| panic!("send udp to 127.0.0.1:{dport}: {e}"));
            sent += 1;
        }
    }
    (sent, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_masks_timeout_and_delta() {
        assert_eq!(
            normalise("tcp      6 431999 ESTABLISHED src=1 delta-time=12 use=1"),
            "tcp      6 <timeout> ESTABLISHED src=1 delta-time=<d> use=1"
        );
        assert_eq!(
            normalise("ipv4     2 udp      17 29 src=1 mark=0 delta-time=3 use=1 id=7"),
            "ipv4     2 udp      17 <timeout> src=1 mark=0 delta-time=<d> use=1 id=7"
        );
    }

    #[test]
    fn counts_parse() {
        let out = Output {
            command: String::new(),
            code: 0,
            stdout: String::new(),
            stderr: "conntrack v1.4.7 (conntrack-tools): 15 flow entries have been shown.\n".into(),
        };
        assert_eq!(out.entries_reported("shown"), Some(15));
        assert_eq!(out.entries_reported("deleted"), None);
    }

    #[test]
    fn normalise_event_masks_progname_and_timeout() {
        assert_eq!(
            normalise_event(
                "    [NEW] udp      17 100 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 \
                 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 mark=0 \
                 [USERSPACE] portid=4503 progname=conntrack"
            ),
            "[NEW] udp      17 <timeout> src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 \
             [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 mark=0 \
             [USERSPACE] portid=4503"
        );
        assert_eq!(
            normalise_event("[DESTROY] ipv4     2 tcp      6 119 TIME_WAIT src=1 delta-time=4"),
            "[DESTROY] ipv4     2 tcp      6 <timeout> TIME_WAIT src=1 delta-time=<d>"
        );
    }

    #[test]
    fn events_shown_parses() {
        let out = Output {
            command: String::new(),
            code: 0,
            stdout: String::new(),
            stderr: "ctscope: eBPF source unavailable\n\
                     ctscope v0.1.0 (conntrack-tools compatible): 14 flow events have been shown.\n"
                .into(),
        };
        assert_eq!(out.events_shown(), Some(14));
    }

    #[test]
    fn diff_counts_duplicates() {
        let a = vec!["x".to_string(), "x".to_string()];
        let b = vec!["x".to_string()];
        assert!(multiset_diff("a", &a, "b", &b).is_some());
        assert!(multiset_diff("a", &a, "b", &a).is_none());
    }
}
