//! `/proc/self/io` for the store's benchmark binaries (Linux; `None` elsewhere).

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be written to storage.
pub fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))?
        .trim()
        .parse()
        .ok()
}
