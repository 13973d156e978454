//! The kernel's loaded BTF objects (vmlinux and one per module), found by
//! name. An fentry/fexit program on a module function is loaded with the
//! fd of its module's BTF object (`attach_btf_obj_fd`).
//!
//! Hand-written, and why: aya keeps its bpf(2) wrappers crate-private and
//! has no call for walking BTF object ids (aya-rs/aya#301); these are three
//! small, stable commands of the bpf(2) ABI.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

/// The `bpf_attr` of the *_GET_NEXT_ID and *_GET_FD_BY_ID commands.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    /// `start_id` or `btf_id`.
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `bpf_attr` of BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, writable bpf_attr prefix of the size given;
    // the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The kernel BTF object named `name` ("vmlinux" or a module's name), or
/// `None` when the kernel has none of that name.
pub fn kernel_btf_fd(name: &str) -> io::Result<Option<OwnedFd>> {
    let mut id = 0;
    loop {
        let mut next = IdAttr {
            id,
            ..IdAttr::default()
        };
        match bpf(BPF_BTF_GET_NEXT_ID, &mut next) {
            Ok(_) => id = next.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut get = IdAttr {
            id,
            ..IdAttr::default()
        };
        let fd = match bpf(BPF_BTF_GET_FD_BY_ID, &mut get) {
            // SAFETY: the kernel returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Unloaded in between (a program's BTF, a module going away).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut name_buf = [0u8; 64];
        let mut info = BtfInfo {
            name: name_buf.as_mut_ptr() as u64,
            name_len: name_buf.len() as u32,
            ..BtfInfo::default()
        };
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<BtfInfo>() as u32,
            info: std::ptr::from_mut(&mut info) as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let len = name_buf.iter().position(|&b| b == 0).unwrap_or(0);
        if info.kernel_btf != 0 && &name_buf[..len] == name.as_bytes() {
            return Ok(Some(fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_running_kernels_vmlinux_btf_or_says_why_not() {
        // Root on the host may walk BTF objects (the bpf(2) calls need
        // CAP_SYS_ADMIN); a refusal is an error, never a wrong answer.
        match kernel_btf_fd("vmlinux") {
            Ok(found) => {
                assert!(found.is_some(), "no vmlinux BTF object");
                assert!(kernel_btf_fd("no-such-module").expect("walk").is_none());
            }
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)),
                "{e}"
            ),
        }
    }
}
