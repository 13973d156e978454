//! Names for `top --lookup`: host names by reverse lookup on a few
//! background threads, cached and bounded, so a frame never waits for one
//! (it shows the address until the name arrives); service names from
//! /etc/services, as getservbyport reads them.
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::IpAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use crate::ct::proto;

/// Finds the name of an address; blocking, so only the resolver's threads
/// call it.
pub trait ReverseLookup: Send + Sync + 'static {
    /// The address's name, or `None` when it has none or the lookup failed.
    fn name(&self, addr: IpAddr) -> Option<String>;
}

/// The system resolver: getnameinfo, which asks what nsswitch.conf says
/// (/etc/hosts, then DNS, usually).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemLookup;

impl ReverseLookup for SystemLookup {
    fn name(&self, addr: IpAddr) -> Option<String> {
        dns_lookup::lookup_addr(&addr).ok()
    }
}

/// How much the resolver may hold and do at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Lookups running at once (one thread each: a lookup blocks its
    /// thread until the resolver answers or times out).
    pub workers: usize,
    /// Addresses waiting for a thread; past this, requests are dropped and
    /// asked again by a later frame.
    pub queue: usize,
    /// Addresses remembered (names, failures, lookups under way); the
    /// least recently shown go first.
    pub cache: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            workers: 4,
            queue: 512,
            cache: 4096,
        }
    }
}

/// A name is looked up again after this long (shown meanwhile).
const NAME_TTL: Duration = Duration::from_secs(600);
/// A failed lookup is tried again after this long.
const FAILED_TTL: Duration = Duration::from_secs(60);
/// The longest name kept (DNS names have at most 253 characters).
const NAME_MAX: usize = 253;

/// What the resolver knows of one address.
struct Slot {
    /// The name, once found.
    name: Option<Arc<str>>,
    /// Queued or being looked up.
    pending: bool,
    /// When to look it up again.
    expires: Instant,
    /// The request tick it was last asked for (shown) at.
    used: u64,
}

/// The resolver's state, behind one mutex that no lookup holds.
struct State {
    slots: HashMap<IpAddr, Slot>,
    queue: VecDeque<IpAddr>,
    /// Lookups running now.
    running: usize,
    /// Threads started.
    threads: usize,
    tick: u64,
    /// The names as a frame takes them; rebuilt after a change.
    snapshot: Option<Arc<HashMap<IpAddr, Arc<str>>>>,
    /// The last handle went: threads end after their lookup.
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// A new address in the queue, or stop.
    work: Condvar,
    /// A lookup finished.
    done: Condvar,
    lookup: Box<dyn ReverseLookup>,
    limits: Limits,
    services: OnceLock<Arc<Services>>,
    load_services: fn() -> Services,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (no lookup runs under
        // the lock), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the threads when the last [`Resolver`] goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.work.notify_all();
    }
}

/// Host names looked up in the background, and service names.
#[derive(Clone)]
pub struct Resolver {
    owner: Arc<Owner>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared().lock();
        f.debug_struct("Resolver")
            .field("cached", &st.slots.len())
            .field("queued", &st.queue.len())
            .field("running", &st.running)
            .finish()
    }
}

impl Resolver {
    /// The system's resolver and /etc/services, with the default limits.
    /// No thread starts and nothing is read before the first request.
    pub fn system() -> Self {
        Self::new(SystemLookup, Limits::default(), Services::system)
    }

    /// A resolver asking `lookup`, within `limits`, with the service names
    /// `services` gives when first needed.
    pub fn new(lookup: impl ReverseLookup, limits: Limits, services: fn() -> Services) -> Self {
        let limits = Limits {
            workers: limits.workers.max(1),
            ..limits
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: HashMap::new(),
                queue: VecDeque::new(),
                running: 0,
                threads: 0,
                tick: 0,
                snapshot: None,
                stopped: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            lookup: Box::new(lookup),
            limits,
            services: OnceLock::new(),
            load_services: services,
        });
        Self {
            owner: Arc::new(Owner(shared)),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.0
    }

    /// Asks for the names of `addrs` (the rows on screen): known ones are
    /// marked as recently shown, new or stale ones queued while the queue
    /// has room. Returns at once.
    pub fn request(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        let shared = self.shared();
        let limits = shared.limits;
        let mut guard = shared.lock();
        let st = &mut *guard;
        st.tick += 1;
        let (tick, now) = (st.tick, Instant::now());
        let mut queued = false;
        for addr in addrs {
            let room = st.queue.len() < limits.queue;
            match st.slots.get_mut(&addr) {
                Some(slot) => {
                    slot.used = tick;
                    if !slot.pending && slot.expires <= now && room {
                        slot.pending = true;
                        st.queue.push_back(addr);
                        queued = true;
                    }
                }
                None if room => {
                    st.slots.insert(
                        addr,
                        Slot {
                            name: None,
                            pending: true,
                            expires: now,
                            used: tick,
                        },
                    );
                    st.queue.push_back(addr);
                    queued = true;
                }
                None => {}
            }
        }
        if !queued {
            return;
        }
        evict(st, limits.cache);
        let wanted = limits.workers.min(st.queue.len() + st.running);
        let start = wanted.saturating_sub(st.threads);
        st.threads += start;
        drop(guard);
        for _ in 0..start {
            let shared = Arc::clone(shared);
            // A thread that cannot start leaves its work to the others.
            if std::thread::Builder::new()
                .name("ctscope-resolve".into())
                .spawn(move || work(&shared))
                .is_err()
            {
                self.shared().lock().threads -= 1;
            }
        }
        shared.work.notify_all();
    }

    /// The names found so far and the service names: what a frame shows.
    pub fn names(&self) -> Names {
        let shared = self.shared();
        let hosts = {
            let mut st = shared.lock();
            if st.snapshot.is_none() {
                let map = st
                    .slots
                    .iter()
                    .filter_map(|(a, s)| Some((*a, Arc::clone(s.name.as_ref()?))))
                    .collect();
                st.snapshot = Some(Arc::new(map));
            }
            st.snapshot.clone().unwrap_or_default()
        };
        let services = Arc::clone(
            shared
                .services
                .get_or_init(|| Arc::new((shared.load_services)())),
        );
        Names { hosts, services }
    }

    /// Waits until nothing is queued or being looked up, or `deadline`
    /// passes; whether everything was answered.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let shared = self.shared();
        let mut st = shared.lock();
        loop {
            if st.queue.is_empty() && st.running == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// How many addresses it remembers, and how many lookups are queued or
    /// running (for tests of the bounds).
    pub fn load(&self) -> (usize, usize) {
        let st = self.shared().lock();
        (st.slots.len(), st.queue.len() + st.running)
    }
}

/// Forgets the least recently shown addresses once there are more than
/// `max`, an eighth more at once so this runs seldom; lookups under way
/// stay (they are bounded by the queue and the threads).
fn evict(st: &mut State, max: usize) {
    if st.slots.len() <= max {
        return;
    }
    let excess = st.slots.len() - max + max / 8;
    let mut by_use: Vec<(u64, IpAddr)> = st
        .slots
        .iter()
        .filter(|(_, s)| !s.pending)
        .map(|(a, s)| (s.used, *a))
        .collect();
    if excess < by_use.len() {
        by_use.select_nth_unstable(excess);
        by_use.truncate(excess);
    }
    for (_, addr) in by_use {
        st.slots.remove(&addr);
    }
    st.snapshot = None;
}

/// A resolver thread: takes addresses off the queue and looks them up,
/// never holding the lock meanwhile.
fn work(shared: &Shared) {
    loop {
        let addr = {
            let mut st = shared.lock();
            loop {
                if st.stopped {
                    st.threads -= 1;
                    return;
                }
                if let Some(addr) = st.queue.pop_front() {
                    st.running += 1;
                    break addr;
                }
                st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let name = shared.lookup.name(addr).and_then(|n| clean_name(&n, addr));
        let mut st = shared.lock();
        st.running -= 1;
        let now = Instant::now();
        let changed = match st.slots.get_mut(&addr) {
            Some(slot) => {
                slot.pending = false;
                slot.expires = now + if name.is_some() { NAME_TTL } else { FAILED_TTL };
                // A failed refresh keeps the name found before.
                match name {
                    Some(n) if slot.name.as_deref() != Some(&*n) => {
                        slot.name = Some(n);
                        true
                    }
                    _ => false,
                }
            }
            // Forgotten meanwhile: the answer goes too.
            None => false,
        };
        if changed {
            st.snapshot = None;
        }
        drop(st);
        shared.done.notify_all();
    }
}

/// A name fit for a terminal: printable characters only (a PTR record can
/// hold any byte, escape sequences included), at most [`NAME_MAX`], and
/// not the address itself (what getnameinfo gives without a name).
fn clean_name(name: &str, addr: IpAddr) -> Option<Arc<str>> {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(NAME_MAX)
        .collect();
    let name = name.trim();
    let numeric = name.parse::<IpAddr>().is_ok_and(|a| a == addr);
    (!name.is_empty() && !numeric).then(|| Arc::from(name))
}

/// Service names by port and protocol.
#[derive(Debug, Default)]
pub struct Services {
    by_port: HashMap<(u16, u8), Arc<str>>,
}

impl Services {
    /// /etc/services; none when it cannot be read.
    pub fn system() -> Self {
        std::fs::read("/etc/services")
            .map(|b| Self::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    }

    /// The services(5) format: `name port/protocol [aliases] [# comment]`;
    /// the first name of a port counts, as with getservbyport. Lines it
    /// cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        let mut by_port = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((port, l4)) = port_proto.split_once('/') else {
                continue;
            };
            let l4 = match l4 {
                "tcp" => proto::TCP,
                "udp" => proto::UDP,
                "sctp" => proto::SCTP,
                "dccp" => proto::DCCP,
                _ => continue,
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if name.chars().any(char::is_control) {
                continue;
            }
            by_port.entry((port, l4)).or_insert_with(|| Arc::from(name));
        }
        Self { by_port }
    }

    /// The name of `port` for protocol `l4`.
    pub fn name(&self, port: u16, l4: u8) -> Option<&str> {
        self.by_port.get(&(port, l4)).map(|n| &**n)
    }
}

/// The names a frame shows in place of addresses and port numbers.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Host names found so far, by address.
    pub hosts: Arc<HashMap<IpAddr, Arc<str>>>,
    /// Service names.
    pub services: Arc<Services>,
}

impl Names {
    /// The name of `addr`, if found yet.
    pub fn host(&self, addr: &IpAddr) -> Option<&str> {
        self.hosts.get(addr).map(|n| &**n)
    }

    /// The name of `port` for `l4`.
    pub fn service(&self, port: u16, l4: u8) -> Option<&str> {
        self.services.name(port, l4)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Names from a table; a gate holds every lookup until opened, to see
    /// what happens while lookups are slow.
    struct Fake {
        names: HashMap<IpAddr, String>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        calls: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
        most_running: Arc<AtomicUsize>,
    }

    impl ReverseLookup for Fake {
        fn name(&self, addr: IpAddr) -> Option<String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(now, Ordering::SeqCst);
            let (open, cv) = &*self.gate;
            let mut o = open.lock().unwrap_or_else(PoisonError::into_inner);
            while !*o {
                o = cv.wait(o).unwrap_or_else(PoisonError::into_inner);
            }
            drop(o);
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.names.get(&addr).cloned()
        }
    }

    struct Probe {
        gate: Arc<(Mutex<bool>, Condvar)>,
        calls: Arc<AtomicUsize>,
        most_running: Arc<AtomicUsize>,
    }

    impl Probe {
        fn open(&self) {
            let (open, cv) = &*self.gate;
            *open.lock().unwrap_or_else(PoisonError::into_inner) = true;
            cv.notify_all();
        }
    }

    fn no_services() -> Services {
        Services::default()
    }

    fn fake(names: &[(&str, &str)], open: bool, limits: Limits) -> (Resolver, Probe) {
        let gate = Arc::new((Mutex::new(open), Condvar::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let most_running = Arc::new(AtomicUsize::new(0));
        let lookup = Fake {
            names: names
                .iter()
                .map(|(a, n)| (a.parse().expect("addr"), (*n).to_string()))
                .collect(),
            gate: Arc::clone(&gate),
            calls: Arc::clone(&calls),
            running: Arc::new(AtomicUsize::new(0)),
            most_running: Arc::clone(&most_running),
        };
        let probe = Probe {
            gate,
            calls,
            most_running,
        };
        (Resolver::new(lookup, limits, no_services), probe)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("addr")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn a_frame_never_waits_and_the_name_comes_later() {
        let (r, probe) = fake(&[("10.0.0.1", "one.test")], false, Limits::default());
        let started = Instant::now();
        r.request([ip("10.0.0.1"), ip("10.0.0.2")]);
        // The lookups are stuck, yet asking and reading return at once.
        assert!(r.names().host(&ip("10.0.0.1")).is_none());
        assert!(!r.wait_idle(Instant::now() + Duration::from_millis(50)));
        assert!(started.elapsed() < Duration::from_secs(5));
        probe.open();
        assert!(r.wait_idle(soon()));
        let names = r.names();
        assert_eq!(names.host(&ip("10.0.0.1")), Some("one.test"));
        assert_eq!(names.host(&ip("10.0.0.2")), None, "no name: the address");
        // Asked again: answered from the cache, failures included.
        r.request([ip("10.0.0.1"), ip("10.0.0.2")]);
        assert!(r.wait_idle(soon()));
        assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn lookups_queue_and_cache_are_bounded() {
        let limits = Limits {
            workers: 2,
            queue: 5,
            cache: 16,
        };
        let (r, probe) = fake(&[], false, limits);
        let many = |from: u32, n: u32| {
            (from..from + n).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        };
        r.request(many(0, 50));
        // Two running, five queued at most; the rest dropped, for a later
        // frame to ask again.
        let (cached, busy) = r.load();
        assert!(busy <= 2 + 5 && cached <= 2 + 5, "{cached} {busy}");
        probe.open();
        assert!(r.wait_idle(soon()));
        assert!(probe.most_running.load(Ordering::SeqCst) <= 2);
        for round in 0..20 {
            r.request(many(100 + round * 5, 5));
            assert!(r.wait_idle(soon()));
            assert!(r.load().0 <= 16, "cache grew to {}", r.load().0);
        }
    }

    #[test]
    fn recently_shown_names_stay_when_the_cache_is_full() {
        let names: Vec<(String, String)> = (0..40)
            .map(|i| (format!("10.0.0.{i}"), format!("h{i}.test")))
            .collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|(a, n)| (&**a, &**n)).collect();
        let limits = Limits {
            workers: 2,
            queue: 64,
            cache: 16,
        };
        let (r, _probe) = fake(&pairs, true, limits);
        r.request([ip("10.0.0.0")]);
        assert!(r.wait_idle(soon()));
        for i in 1..40 {
            // 10.0.0.0 is on screen in every frame.
            r.request([ip("10.0.0.0"), ip(&format!("10.0.0.{i}"))]);
            assert!(r.wait_idle(soon()));
        }
        assert_eq!(r.names().host(&ip("10.0.0.0")), Some("h0.test"));
        assert_eq!(r.names().host(&ip("10.0.0.39")), Some("h39.test"));
        assert!(r.names().host(&ip("10.0.0.1")).is_none(), "evicted");
    }

    #[test]
    fn names_are_cleaned_for_the_terminal() {
        let (r, _probe) = fake(
            &[
                ("10.0.0.1", "evil\u{1b}[2J.test"),
                ("10.0.0.2", "10.0.0.2"),
                ("10.0.0.3", "   "),
            ],
            true,
            Limits::default(),
        );
        r.request([ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]);
        assert!(r.wait_idle(soon()));
        let n = r.names();
        assert_eq!(n.host(&ip("10.0.0.1")), Some("evil[2J.test"));
        assert_eq!(n.host(&ip("10.0.0.2")), None);
        assert_eq!(n.host(&ip("10.0.0.3")), None);
        let long = "a".repeat(400);
        assert_eq!(
            clean_name(&long, ip("10.0.0.4")).map(|n| n.len()),
            Some(NAME_MAX)
        );
    }

    #[test]
    fn services_as_getservbyport_reads_them() {
        let s = Services::parse(
            "# comment\nssh\t\t22/tcp\ndomain\t\t53/tcp\ndomain 53/udp # DNS\n\
             http 80/tcp www\nwww-alt 80/tcp\nbad 99999/tcp\nnoport\nx 7/ddp\n",
        );
        assert_eq!(s.name(22, proto::TCP), Some("ssh"));
        assert_eq!(s.name(53, proto::UDP), Some("domain"));
        assert_eq!(s.name(80, proto::TCP), Some("http"), "the first name");
        assert_eq!(s.name(22, proto::UDP), None);
        assert_eq!(s.name(7, proto::TCP), None);
    }

    /// The real resolver on an address /etc/hosts names on every Debian
    /// system (files come first in nsswitch.conf, so no DNS query leaves).
    #[test]
    fn system_lookup_reads_etc_hosts() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let named = hosts.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("127.0.0.1") && w.next() == Some("localhost")
        });
        assert!(named, "this test needs `127.0.0.1 localhost` in /etc/hosts");
        let r = Resolver::system();
        r.request([ip("127.0.0.1")]);
        assert!(r.wait_idle(soon()));
        assert_eq!(r.names().host(&ip("127.0.0.1")), Some("localhost"));
    }
}
