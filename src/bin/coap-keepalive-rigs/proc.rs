//! What `/proc` says of a process (CPU time, resident memory, open descriptors) and of the
//! kernel's network counters (Linux).

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// A `kB` field of `/proc/<pid>/status`, such as `VmRSS:` or `VmHWM:` (`pid` may be `self`).
pub fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // Fields 14 and 15 of stat(5); the first one after the name is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// The counter `name` of the `group` (`TcpExt:`, `Udp:`) in `path`, where a line of names is
/// followed by a line of values with the same prefix.
pub fn net_counter(path: &str, group: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    counter_in(&text, group, name)
}

fn counter_in(text: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|line| line.starts_with(group));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, value)| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kb() {
        assert!(status_kb("self", "VmRSS:").is_some_and(|kb| kb > 0));
        assert!(status_kb("self", "NoSuchField:").is_none());
        assert!(open_fds() >= 3);
    }

    #[test]
    fn kernel_counters_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 19432272 233804 1142489 20864710 1142480\n";
        assert_eq!(counter_in(snmp, "Udp:", "RcvbufErrors"), Some(1_142_480));
        assert_eq!(counter_in(snmp, "Udp:", "NoSuchCounter"), None);
        assert_eq!(counter_in(snmp, "TcpExt:", "ListenOverflows"), None);
        assert!(net_counter("/proc/net/snmp", "Udp:", "RcvbufErrors").is_some());
    }

    #[test]
    fn cpu_time_of_this_process_is_read() {
        assert!(cpu_secs(std::process::id()).is_some_and(|secs| secs >= 0.0));
    }
}
