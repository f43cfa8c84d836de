//! CPU time spent by the server and by this tool during a phase, from
//! /proc/PID/stat. On a machine where both share the cores, a rate alone
//! does not say which side ran out: CPU per acked message does, and it
//! compares two servers whatever the load generator took.
//!
//! Also the server's resident memory, from /proc/PID/status, which `idle`
//! divides by the polls it parked.

use serde::{Deserialize, Serialize};

/// CPU seconds (user + system) of each of `pids`, summed.
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        ticks += stat_ticks(&stat).ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    }
    Ok(ticks as f64 / ticks_per_second())
}

/// utime + stime of one /proc/PID/stat line. The command name (field 2)
/// may hold spaces and parentheses, so fields count from its last `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory of `pids`, summed, in KiB.
pub fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
        total += kib;
    }
    Ok(total)
}

/// KiB of resident memory per parked poll, from readings before and after.
pub fn per_poll(before: u64, after: u64, parked: u64) -> f64 {
    if parked == 0 {
        return 0.0;
    }
    (after as f64 - before as f64) / parked as f64
}

/// A reading taken at the start of a phase.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    server: Option<f64>,
    tool: Option<f64>,
}

impl Mark {
    /// The server's (when pids are given and readable) and this process's
    /// CPU time now.
    pub fn now(server_pids: &[u32]) -> Mark {
        Mark {
            server: (!server_pids.is_empty())
                .then(|| cpu_seconds(server_pids).ok())
                .flatten(),
            tool: cpu_seconds(&[std::process::id()]).ok(),
        }
    }

    /// CPU spent since this mark, for `acked` messages.
    pub fn spent(&self, server_pids: &[u32], acked: u64) -> CpuUse {
        let now = Mark::now(server_pids);
        let diff = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        CpuUse::of(
            diff(self.server, now.server),
            diff(self.tool, now.tool),
            acked,
        )
    }
}

/// CPU over a phase (sending, then draining what was owed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuUse {
    pub server_seconds: Option<f64>,
    pub server_us_per_message: Option<f64>,
    pub tool_seconds: Option<f64>,
    pub tool_us_per_message: Option<f64>,
}

impl CpuUse {
    fn of(server: Option<f64>, tool: Option<f64>, acked: u64) -> CpuUse {
        let per = |s: Option<f64>| s.filter(|_| acked > 0).map(|s| s * 1e6 / acked as f64);
        CpuUse {
            server_seconds: server,
            server_us_per_message: per(server),
            tool_seconds: tool,
            tool_us_per_message: per(tool),
        }
    }

    /// Both phases' CPU, per message over both.
    pub fn add(&self, other: &CpuUse, acked_self: u64, acked_other: u64) -> CpuUse {
        let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        CpuUse::of(
            sum(self.server_seconds, other.server_seconds),
            sum(self.tool_seconds, other.tool_seconds),
            acked_self + acked_other,
        )
    }

    /// "server 12.3 s (171 µs per acked message), tool 9.8 s (136 µs)".
    pub fn text(&self) -> String {
        let part = |s: Option<f64>, per: Option<f64>, missing: &str| match (s, per) {
            (Some(s), Some(per)) => format!("{s:.1} s ({per:.0} µs per acked message)"),
            (Some(s), None) => format!("{s:.1} s"),
            (None, _) => missing.into(),
        };
        format!(
            "server {}, tool {}",
            part(
                self.server_seconds,
                self.server_us_per_message,
                "not measured (give --server-pid)"
            ),
            part(self.tool_seconds, self.tool_us_per_message, "not measured")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_name_with_spaces() {
        let line = "4242 (nginx: worker) S 1 4242 4242 0 -1 4194624 900 0 0 0 \
                    1234 567 0 0 20 0 1 0 100 1000 200 18446744073709551615";
        assert_eq!(stat_ticks(line), Some(1234 + 567));
        let odd = "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(stat_ticks(odd), Some(11));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn counts_this_process_burning_cpu() {
        let me = [std::process::id()];
        let before = cpu_seconds(&me).unwrap();
        // Spin until the kernel has charged at least a few clock ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(&me).unwrap();
        assert!(after > before, "{before} -> {after}");
        assert!(cpu_seconds(&[u32::MAX]).is_err(), "no such process");
    }

    #[test]
    fn per_message_figures_divide_by_acked() {
        let mark = Mark {
            server: Some(1.0),
            tool: Some(2.0),
        };
        let diff = CpuUse {
            server_seconds: Some(3.0),
            server_us_per_message: Some(3.0e6 / 1000.0),
            tool_seconds: None,
            tool_us_per_message: None,
        };
        let both = diff.add(&diff, 1000, 1000);
        assert_eq!(both.server_seconds, Some(6.0));
        assert_eq!(both.server_us_per_message, Some(3000.0));
        assert_eq!(both.tool_seconds, None);
        // No acked message: no per-message figure, but the seconds stand.
        let none = mark.spent(&[], 0);
        assert_eq!(none.server_seconds, None);
        assert_eq!(none.tool_us_per_message, None);
        assert!(none.tool_seconds.is_some());
    }
}
