//! `ps`: the container's processes as a ps(1) table, the way runc shows
//! them: run `ps` with the caller's arguments (`-ef` by default) where the
//! processes are visible, keep the header and the lines whose PID column
//! names a process of the container.
//!
//! Each isolation runs ps where its pids mean something (the host for a
//! container, the guest for a VM) and filters with [`filter_table`].

use std::process::Command;

/// ps(1) arguments when none are given, as in runc.
pub const DEFAULT_ARGS: &[&str] = &["-ef"];

#[derive(Debug, thiserror::Error)]
pub enum PsError {
    #[error("cannot run ps(1) (install procps)")]
    Spawn(#[source] std::io::Error),
    #[error("ps {args} failed: {output}")]
    Failed { args: String, output: String },
    #[error("the output of ps {args} has no PID column: pass ps arguments that print one (such as -ef or -o pid,cmd)")]
    NoPidColumn { args: String },
    #[error("cannot read the PID column of ps output line {line:?}")]
    BadLine { line: String },
}

/// Runs `ps` with `args` (or [`DEFAULT_ARGS`]) and keeps the lines of `pids`.
pub fn table(args: &[String], pids: &[i32]) -> Result<String, PsError> {
    let args: Vec<String> =
        if args.is_empty() { DEFAULT_ARGS.iter().map(|s| s.to_string()).collect() } else { args.to_vec() };
    let out = Command::new("ps").args(&args).output().map_err(PsError::Spawn)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let mut output = text;
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(PsError::Failed { args: args.join(" "), output: output.trim().to_string() });
    }
    filter_table(&text, pids).map_err(|e| match e {
        PsError::NoPidColumn { .. } => PsError::NoPidColumn { args: args.join(" ") },
        e => e,
    })
}

/// Keeps the header of ps output and the lines whose PID is in `pids`.
pub fn filter_table(output: &str, pids: &[i32]) -> Result<String, PsError> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|t| t == "PID")
        .ok_or_else(|| PsError::NoPidColumn { args: String::new() })?;
    let mut out = String::from(header);
    out.push('\n');
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let pid: i32 = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| PsError::BadLine { line: line.to_string() })?;
        if pids.contains(&pid) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// A `ps -ef` table of `pids` read straight from /proc, for places without
/// a ps(1) binary (a VM guest's initramfs). Users show as numbers: such a
/// place has no /etc/passwd of the container's.
pub fn proc_table(pids: &[i32]) -> String {
    let tick = clock_ticks();
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok()))
        .unwrap_or(0);
    let mut rows: Vec<[String; 8]> = Vec::new();
    for &pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'.
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat.get(stat.find('(').map_or(0, |o| o + 1)..close).unwrap_or("").to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields after the name, 0-based: state 0, ppid 1, tty_nr 4,
        // utime 11, stime 12, starttime 19.
        let ppid = num(1);
        let tty = num(4);
        let cpu = (num(11) + num(12)) / tick.max(1);
        let start = btime + num(19) / tick.max(1);
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next().map(str::to_string)))
            .unwrap_or_else(|| "?".into());
        let cmd = super::process::command_line(pid).unwrap_or_else(|| format!("[{comm}]"));
        let tty = match (tty >> 8) & 0xfff {
            0 => "?".to_string(),
            136..=143 => format!("pts/{}", (tty & 0xff) | ((tty >> 12) & 0xfff00)),
            _ => format!("tty{}", tty & 0xff),
        };
        let stime = format!("{:02}:{:02}", (start / 3600) % 24, (start / 60) % 60);
        let time = format!("{:02}:{:02}:{:02}", cpu / 3600, (cpu / 60) % 60, cpu % 60);
        rows.push([uid, pid.to_string(), ppid.to_string(), "0".into(), stime, tty, time, cmd]);
    }
    super::table(["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], &rows)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no side effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: &str = "UID          PID    PPID  C STIME TTY          TIME CMD\n\
                      root           1       0  0 10:00 ?        00:00:01 /sbin/init\n\
                      root        4242       1  0 10:01 ?        00:00:00 sleep 100\n\
                      root        4243    4242  0 10:01 ?        00:00:00 sh -c x\n";

    #[test]
    fn the_builtin_table_shows_this_process_and_filters_like_ps() {
        let me = std::process::id() as i32;
        let t = proc_table(&[me, -5]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("UID") && lines[0].contains("PID") && lines[0].ends_with("CMD"));
        let f = filter_table(&t, &[me]).unwrap();
        assert_eq!(f.lines().count(), 2, "the header names the PID column");
    }

    #[test]
    fn keeps_the_header_and_the_containers_lines() {
        let t = filter_table(PS, &[4242, 4243]).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("UID"));
        assert!(lines[1].contains("sleep 100") && lines[2].contains("sh -c x"));
        assert_eq!(filter_table(PS, &[]).unwrap().lines().count(), 1);
    }

    #[test]
    fn the_pid_column_can_be_anywhere_and_must_exist() {
        let t = filter_table("CMD PID\nsleep 7\nsh 8\n", &[8]).unwrap();
        assert_eq!(t, "CMD PID\nsh 8\n");
        assert!(matches!(filter_table("USER CMD\nroot x\n", &[1]), Err(PsError::NoPidColumn { .. })));
        assert!(matches!(filter_table("PID CMD\nx y\n", &[1]), Err(PsError::BadLine { .. })));
    }

    #[test]
    fn runs_ps_for_real() {
        if Command::new("ps").arg("-V").output().is_err() {
            eprintln!("SKIPPED: ps(1) is not installed");
            return;
        }
        let me = std::process::id() as i32;
        let t = table(&["-o".into(), "pid,comm".into(), "-p".into(), me.to_string()], &[me]).unwrap();
        assert_eq!(t.lines().count(), 2, "{t}");
        let e = table(&["-o".into(), "comm".into()], &[me]).unwrap_err();
        assert!(e.to_string().contains("no PID column") && e.to_string().contains("-o comm"), "{e}");
    }
}
