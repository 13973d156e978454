//! The per-test network namespace: its set-up (tracking, sysctls), and
//! running, starting and watching programs inside it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};

use crate::{
    Background, Output,
    command::ctscope_bin_str,
    host, poll_until, run,
    traffic::{INSERTED, VARIED_RULESET, make_traffic},
};

/// The environment variable that turns every namespace test off.
pub const SKIP_SWITCH: &str = "CTSCOPE_SKIP_NETNS";

static COUNTER: AtomicU32 = AtomicU32::new(0);

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

    /// Runs `argv` inside the namespace with `conf_dir` mounted over
    /// /etc/xtables (where conntrack and ctscope read connlabel.conf), in a
    /// private mount namespace, so the host's files stay as they are.
    #[track_caller]
    pub fn exec_with_xtables(&self, conf_dir: &Path, argv: &[&str]) -> Output {
        let dir = conf_dir.to_string_lossy();
        run(Command::new("unshare")
            .args([
                "--mount",
                "sh",
                "-c",
                r#"d=$1 n=$2; shift 2; mount --bind "$d" /etc/xtables && exec ip netns exec "$n" "$@""#,
                "sh",
                &dir,
                &self.name,
            ])
            .args(argv))
    }

    /// `conntrack ARGS` inside the namespace.
    #[track_caller]
    pub fn conntrack(&self, args: &[&str]) -> Output {
        self.exec(&[&["conntrack"], args].concat())
    }

    /// `conntrack -C`: the number of entries the kernel holds here.
    #[track_caller]
    pub fn count_entries(&self) -> f64 {
        let out = self.conntrack(&["-C"]);
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("conntrack -C\n{out}"))
    }

    /// `conntrack -I ENTRY -t 3600`, which must succeed: an entry that
    /// outlives the test. ENTRY is written as conntrack takes it and split
    /// on spaces (`-p udp -s 10.0.0.1 ...`).
    #[track_caller]
    pub fn insert(&self, entry: &str) {
        let entry: Vec<&str> = entry.split_whitespace().collect();
        self.conntrack(&[&["-I"], &entry[..], &["-t", "3600"]].concat())
            .expect_code(0);
    }

    /// `ctscope ARGS` inside the namespace (via `ip netns exec`).
    #[track_caller]
    pub fn ctscope(&self, args: &[&str]) -> Output {
        self.exec(&[&[ctscope_bin_str().as_str()], args].concat())
    }

    /// Loads an nftables script into the namespace.
    #[track_caller]
    pub fn nft(&self, script: &str) {
        let path = self.temp_base().with_extension("nft");
        std::fs::write(&path, script).expect("write nft script");
        let out = self.exec(&["nft", "-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
        out.expect_code(0);
    }

    /// Starts `argv` inside the namespace (`ip netns exec`, which execs, so
    /// the child's pid is the program's), its output going to files.
    #[track_caller]
    pub fn spawn(&self, argv: &[&str]) -> Background {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        Background::start(cmd, argv.join(" "), &self.temp_base())
    }

    /// Starts `ctscope ARGS` inside the namespace.
    #[track_caller]
    pub fn spawn_ctscope(&self, args: &[&str]) -> Background {
        self.spawn(&[&[ctscope_bin_str().as_str()], args].concat())
    }

    /// Starts `conntrack ARGS` inside the namespace.
    #[track_caller]
    pub fn spawn_conntrack(&self, args: &[&str]) -> Background {
        self.spawn(&[&["conntrack"], args].concat())
    }

    /// Starts `ctscope events ARGS`, then `conntrack -E ARGS`: the two
    /// listeners of an events comparison.
    #[track_caller]
    pub fn spawn_events(&self, args: &[&str]) -> (Background, Background) {
        let cs = self.spawn_ctscope(&[&["events"], args].concat());
        let ct = self.spawn_conntrack(&[&["-E"], args].concat());
        (cs, ct)
    }

    /// A path in the temporary directory named after the namespace and
    /// unique in this process; files get their own extension.
    fn temp_base(&self) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        std::env::temp_dir().join(format!("{}-{n}", self.name))
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
        for entry in INSERTED {
            self.insert(entry);
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
