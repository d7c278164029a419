//! Running an operator's hook: a program and its arguments (no shell), extra environment,
//! stdin from /dev/null, output kept (its last 4 KiB), killed with its process group
//! when it outlives its timeout.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// Its exit code (`None`: killed by a signal, or by us at the timeout).
    pub code: Option<i32>,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// The end of what it wrote (stdout and stderr).
    pub output: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl HookRun {
    /// Exit 0 in time.
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// The last `n` bytes of `b`, as text.
fn tail(b: &[u8], n: usize) -> String {
    let start = b.len().saturating_sub(n);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

/// Runs `argv` with `env` added, at most `timeout`.
pub fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<HookRun> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an empty command",
        ));
    };
    let started = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills what it started too.
        .process_group(0)
        .spawn()?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    // Readers, so a hook writing much never blocks on a full pipe.
    let read = |p: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut p) = p {
                let mut buf = [0u8; 8192];
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 64 << 10 {
                        kept.drain(..kept.len() - (4 << 10));
                    }
                }
            }
            let _ = tx.send(kept);
        });
        rx
    };
    let ro = read(out.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let re = read(err.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            // SAFETY: kill(2) of the process group we made for our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A hook that exited leaving a process behind that holds its output open: what it
    // wrote until then is not waited for more than a second.
    let mut output = Vec::new();
    for r in [ro, re] {
        if let Ok(b) = r.recv_timeout(Duration::from_secs(1)) {
            output.extend_from_slice(&b);
        }
    }
    Ok(HookRun {
        code: status.and_then(|s| s.code()),
        timed_out,
        output: tail(&output, 4 << 10),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn exit_codes_output_environment_and_the_timeout() {
        let r = run(
            &sh("echo \"id=$PORTWARDEN_CHANGE_ID\"; exit 3"),
            &[("PORTWARDEN_CHANGE_ID".into(), "7".into())],
            Duration::from_secs(10),
        )
        .expect("run");
        assert_eq!((r.code, r.timed_out), (Some(3), false));
        assert!(r.output.contains("id=7"), "{r:?}");
        assert!(
            run(&sh("true"), &[], Duration::from_secs(10))
                .expect("run")
                .ok()
        );
        // A hook that hangs (and its child) is killed at the timeout.
        let r = run(&sh("sleep 30 & sleep 30"), &[], Duration::from_millis(300)).expect("run");
        assert!(r.timed_out && !r.ok(), "{r:?}");
        assert!(r.elapsed < Duration::from_secs(5), "{r:?}");
        assert!(run(&["/nonexistent/hook".into()], &[], Duration::from_secs(1)).is_err());
        // One that leaves a process behind holding its output is not waited for.
        let t0 = Instant::now();
        let r = run(
            &sh("echo early; sleep 4 & exit 0"),
            &[],
            Duration::from_secs(10),
        )
        .expect("run");
        assert!(r.ok(), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
}
