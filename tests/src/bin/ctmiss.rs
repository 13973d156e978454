//! ctmiss: makes the kernel skip ctscope's kprobe programs, for the qemu
//! guest test tests/vm/ebpf_misses.sh (issue 12, "No silent loss").
//!
//! The kernel runs a kprobe's BPF program only when no other BPF program of
//! the perf kinds (kprobe, classic tracepoint, perf_event) is running on that
//! CPU (`trace_call_bpf` checks the per-CPU `bpf_prog_active`), and a kprobe
//! handler only when no other kprobe handler is (`kprobe_running()`). Both
//! hold while something runs on top of such a program: a softirq raised by
//! an interrupt, which is where conntrack confirms the entries of received
//! packets. So:
//!
//! - `ctmiss busy --tracepoint CATEGORY/NAME | --kprobe FUNCTION --cpu N`
//!   loads a BPF program of its own (raw bytecode, no object file: a
//!   bounded loop of `--loops` rounds, 2,000 by default, each a helper call
//!   copying 512 bytes), attaches it to that classic tracepoint or kprobe
//!   on CPU N only (a perf event per CPU), and keeps CPU N inside it: it
//!   pins itself there and calls getppid(2) in a tight loop, which fires
//!   `syscalls/sys_enter_getppid` or a kprobe on `__x64_sys_getppid`. Both
//!   run their program with interrupts on (a syscall tracepoint; a kprobe
//!   on a function's first instruction goes through ftrace), so softirqs
//!   run on top of it. It prints `ctmiss: busy ...` once attached and runs
//!   until killed.
//! - `ctmiss send --dst ADDR --count N [--rate R] [--dport-base P]` sends N
//!   UDP datagrams from one socket to ADDR, one destination port each (N
//!   new conntrack tuples), R a second (default 2,000), and prints
//!   `ctmiss: sent N datagrams in S s`.
//!
//! Exit status 1 when the kernel refuses something (saying what), 2 on bad
//! arguments.
use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::ExitCode,
    time::{Duration, Instant},
};

/// `enum bpf_cmd` and `enum bpf_prog_type` values (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
/// `PERF_TYPE_TRACEPOINT` (include/uapi/linux/perf_event.h).
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_ATTR_SIZE_VER1`: up to and including `config2`.
const PERF_ATTR_SIZE: u32 = 72;
/// `_IO('$', 0)` and `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// Where the kernel lists its kprobe PMU's type and tracepoints' ids.
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";
const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";
/// Rounds of the busy loop: enough that the CPU spends most of its time
/// inside the program (in ebpf_misses.sh, two thirds to all of the flows
/// sent meanwhile were confirmed there), few for the verifier.
const DEFAULT_LOOPS: i32 = 2_000;

/// The part of `union bpf_attr` that BPF_PROG_LOAD reads (the kernel
/// takes a shorter attr as zero-filled).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// kprobe PMU: the function's name (a pointer).
    config1: u64,
    /// kprobe PMU: the offset into the function.
    config2: u64,
}

/// One BPF instruction, as `struct bpf_insn` lays it out.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (src << 4) | (dst & 0x0f);
    u64::from(code)
        | (u64::from(regs) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// `for (i = 0; i < loops; i++) bpf_probe_read_kernel(buf, 512, buf);
/// return 0`, `buf` being the 512 bytes of the program's stack: each round
/// is a helper call copying 512 bytes, so the verifier, which walks a
/// bounded loop round by round at load time, has few rounds to walk for a
/// long run. (A loop of `r1 += 1` alone took 47 s of a slow guest's time to
/// verify for 300,000 rounds; bpf_loop needs BTF for its callback.)
fn busy_program(loops: i32) -> [u64; 10] {
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
    const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const JLT_IMM: u8 = 0xa5; // BPF_JMP | BPF_JLT | BPF_K
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const BPF_FUNC_PROBE_READ_KERNEL: i32 = 113;
    const FP: u8 = 10;
    [
        insn(MOV64_IMM, 6, 0, 0, 0),
        // loop: r1 = r3 = fp - 512, r2 = 512
        insn(MOV64_REG, 1, FP, 0, 0),
        insn(ADD64_IMM, 1, 0, 0, -512),
        insn(MOV64_IMM, 2, 0, 0, 512),
        insn(MOV64_REG, 3, 1, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_PROBE_READ_KERNEL),
        insn(ADD64_IMM, 6, 0, 0, 1),
        // if r6 < loops goto loop (the jump is relative to the next one)
        insn(JLT_IMM, 6, 0, -7, loops),
        insn(MOV64_IMM, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Loads the busy program as `prog_type`; on refusal, the verifier's
/// summary (log level 4: its statistics and the error, not every one of
/// the loop's instructions).
fn load_program(prog_type: u32, loops: i32) -> Result<OwnedFd, String> {
    let insns = busy_program(loops);
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 4,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..6].copy_from_slice(b"ctmiss");
    // SAFETY: attr is a valid BPF_PROG_LOAD attr of the size given; the
    // instructions, license and log buffer it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw mut attr,
            size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(format!(
            "BPF_PROG_LOAD: {err}; verifier: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens a perf event on `cpu` (every task there) and runs `prog` on it.
fn attach(attr: &mut PerfEventAttr, cpu: i32, prog: &OwnedFd) -> Result<OwnedFd, String> {
    attr.size = PERF_ATTR_SIZE;
    attr.sample_period = 1;
    attr.wakeup_events = 1;
    // SAFETY: attr is a valid perf_event_attr of the size it says; a name
    // it points to (config1) outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const *attr,
            -1 as libc::pid_t,
            cpu,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!("perf_event_open: {}", io::Error::last_os_error()));
    }
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: both ioctls take an int argument on a perf event fd.
    let set = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) };
    if set < 0 {
        return Err(format!(
            "PERF_EVENT_IOC_SET_BPF: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    let on = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    if on < 0 {
        return Err(format!(
            "PERF_EVENT_IOC_ENABLE: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(event)
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: i32) -> Result<(), String> {
    let cpu = usize::try_from(cpu).map_err(|_| format!("bad CPU {cpu}"))?;
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (checked
    // against its size); sched_setaffinity reads it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * size_of::<libc::cpu_set_t>() {
            return Err(format!("CPU {cpu} out of range"));
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if ok != 0 {
        return Err(format!(
            "sched_setaffinity({cpu}): {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

enum Hook {
    Tracepoint(String),
    Kprobe(String),
}

fn busy(hook: &Hook, cpu: i32, loops: i32) -> Result<(), String> {
    // The kprobe's function name: the attr points to it until
    // perf_event_open has read it.
    let mut name = None;
    let (prog_type, mut attr, what) = match hook {
        Hook::Tracepoint(tp) => {
            let path = format!("{TRACEFS_EVENTS}/{tp}/id");
            let id = std::fs::read_to_string(&path)
                .map_err(|e| format!("{path}: {e} (is tracefs mounted, the tracepoint there?)"))?;
            let id: u64 = id.trim().parse().map_err(|e| format!("{path}: {e}"))?;
            let attr = PerfEventAttr {
                kind: PERF_TYPE_TRACEPOINT,
                config: id,
                ..PerfEventAttr::default()
            };
            (BPF_PROG_TYPE_TRACEPOINT, attr, format!("tracepoint {tp}"))
        }
        Hook::Kprobe(function) => {
            let pmu = std::fs::read_to_string(KPROBE_PMU_TYPE)
                .map_err(|e| format!("{KPROBE_PMU_TYPE}: {e} (no kprobes?)"))?;
            let kind: u32 = pmu
                .trim()
                .parse()
                .map_err(|e| format!("{KPROBE_PMU_TYPE}: {e}"))?;
            let c = CString::new(function.as_str()).map_err(|e| e.to_string())?;
            let attr = PerfEventAttr {
                kind,
                config1: c.as_ptr() as u64,
                ..PerfEventAttr::default()
            };
            name = Some(c);
            (BPF_PROG_TYPE_KPROBE, attr, format!("kprobe {function}"))
        }
    };
    let prog = load_program(prog_type, loops)?;
    let _event = attach(&mut attr, cpu, &prog)?;
    drop(name);
    pin(cpu)?;
    eprintln!("ctmiss: busy on CPU {cpu}: {what} runs a {loops}-round loop on every getppid()");
    loop {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::getppid() };
    }
}

fn send(dst: Ipv4Addr, count: u32, rate: f64, dport_base: u16) -> Result<(), String> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| format!("bind: {e}"))?;
    let last = u32::from(dport_base) + count;
    if count == 0 || last > 65536 {
        return Err(format!(
            "--count {count} from port {dport_base} passes 65535"
        ));
    }
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for (i, port) in (u32::from(dport_base)..last).enumerate() {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let port = u16::try_from(port).map_err(|e| e.to_string())?;
        socket
            .send_to(b"ctmiss\n", SocketAddrV4::new(dst, port))
            .map_err(|e| format!("send to {dst}:{port}: {e}"))?;
    }
    eprintln!(
        "ctmiss: sent {count} datagrams in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

const USAGE: &str = "usage: ctmiss busy (--tracepoint CATEGORY/NAME | --kprobe FUNCTION) --cpu N [--loops N]\n       ctmiss send --dst IPV4 --count N [--rate PER_SEC] [--dport-base PORT]";

/// The value after each `--name` of `args`, by name; an error for a word
/// that is not one of `names`.
fn options<'a>(args: &'a [String], names: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .filter(|n| names.contains(n))
            .ok_or_else(|| format!("unknown argument {flag}"))?;
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        out.push((name, value.as_str()));
    }
    Ok(out)
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for --{name}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let run = match command.as_str() {
        "busy" => options(rest, &["tracepoint", "kprobe", "cpu", "loops"]).and_then(|opts| {
            let (mut hook, mut cpu, mut loops) = (None, None, DEFAULT_LOOPS);
            for (name, value) in opts {
                match name {
                    "tracepoint" => hook = Some(Hook::Tracepoint(value.to_string())),
                    "kprobe" => hook = Some(Hook::Kprobe(value.to_string())),
                    "cpu" => cpu = Some(parse(name, value)?),
                    _ => loops = parse(name, value)?,
                }
            }
            let hook = hook.ok_or("--tracepoint or --kprobe is needed")?;
            let cpu = cpu.ok_or("--cpu is needed")?;
            Ok(Box::new(move || busy(&hook, cpu, loops))
                as Box<dyn FnOnce() -> Result<(), String>>)
        }),
        "send" => options(rest, &["dst", "count", "rate", "dport-base"]).and_then(|opts| {
            let (mut dst, mut count, mut rate, mut dport_base) =
                (None, None, 2000.0_f64, 10_000u16);
            for (name, value) in opts {
                match name {
                    "dst" => dst = Some(parse(name, value)?),
                    "count" => count = Some(parse(name, value)?),
                    "rate" => rate = parse(name, value)?,
                    _ => dport_base = parse(name, value)?,
                }
            }
            let dst = dst.ok_or("--dst is needed")?;
            let count = count.ok_or("--count is needed")?;
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(format!("--rate {rate} is not a rate"));
            }
            Ok(Box::new(move || send(dst, count, rate, dport_base))
                as Box<dyn FnOnce() -> Result<(), String>>)
        }),
        other => Err(format!("unknown command {other}")),
    };
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            eprintln!("ctmiss: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctmiss: {e}");
            ExitCode::FAILURE
        }
    }
}
