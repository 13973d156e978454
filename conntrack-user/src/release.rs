//! The running kernel's version, for the features that depend on it.

/// The running kernel's (major, minor), from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> Option<(u32, u32)> {
    parse_release(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

/// (major, minor) of a release string such as `6.12.117+deb12-cloud-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_give_major_and_minor() {
        assert_eq!(parse_release("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_release("6.1.0-56-cloud-amd64\n"), Some((6, 1)));
        assert_eq!(parse_release("6.7"), Some((6, 7)));
        assert!(parse_release("6.1.0").is_some_and(|v| v < (6, 7)));
        assert_eq!(parse_release("garbage"), None);
        assert_eq!(parse_release(""), None);
        assert!(kernel_version().is_some(), "this kernel's release parses");
    }
}
