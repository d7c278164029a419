//! The command line as clap sees it: only what the user typed, checked for shape.

use std::path::PathBuf;

use portwarden_core::units::HumanDuration;
use portwarden_core::{PortProto, PortRange};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Governs the ports of mirror and replication servers from one declarative policy.
#[derive(Debug, Parser)]
#[command(name = "portwarden", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Policy file; without it the built-in baseline policy applies.
    #[arg(long, global = true, value_name = "FILE", env = "PORTWARDEN_POLICY")]
    pub policy: Option<PathBuf>,
    /// State directory for the embedded store [default: /var/lib/portwarden as root,
    /// else $XDG_STATE_HOME/portwarden]. (`--state` is `ls`'s socket-state filter.)
    #[arg(
        long = "state-dir",
        global = true,
        value_name = "DIR",
        env = "PORTWARDEN_STATE"
    )]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more about what is being done (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this host against the policy; exit 1 if findings at or above --fail-on exist.
    Check(CheckArgs),
    /// List sockets with their state and, with -p, their owning processes (like ss -tulnp).
    Ls(LsArgs),
    /// Show the processes holding a port; exit 1 if nothing holds it.
    Who(WhoArgs),
    /// Lease a port for a service: its standard port if free, else one from its pool.
    Alloc(AllocArgs),
    /// Extend a lease you own.
    Renew(RenewArgs),
    /// Give back a lease you own.
    Release(ReleaseArgs),
    /// List the leases.
    Leases,
    /// Retire expired and idle leases (after observing which ports have listeners).
    Reclaim(ReclaimArgs),
    /// The change ledger: list, verify, export, head.
    Log(LogArgs),
    /// Pool occupation; `pools reserve` keeps the kernel's ephemeral picks out of pools.
    Pools(PoolsArgs),
    /// Scan hosts for open ports (SYN, TCP connect or UDP), with service and TLS detection.
    Scan(ScanArgs),
    /// The nftables firewall: plan, diff, apply with commit-confirm, confirm, rollback.
    #[command(subcommand)]
    Fw(FwCommand),
    /// Open a port to one source for a while (a set element with a timeout).
    Grant(GrantArgs),
    /// Take a grant back before it expires.
    Revoke(RevokeArgs),
    /// The compliance report: host summary, exposure score, audit table, findings.
    Report(ReportArgs),
    /// Draft or validate policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List the service catalog, or show one entry.
    Catalog(CatalogArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    Man,
    /// Run the daemon: the HTTP API, /metrics, periodic jobs (SIGHUP re-reads the policy).
    Serve(ServeArgs),
    /// Balance the policy's [[balance]] groups over their backends, in the foreground
    /// (SIGHUP re-reads the policy, SIGTERM drains); `balance status` shows a running one.
    Balance(BalanceArgs),
    /// Throughput tests over the iperf3 protocol (our server takes `iperf3 -c`, our client
    /// tests `iperf3 -s`), judged against the policy's [transfer] link.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The daemon's API tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Change requests: request (with a pre-flight), approve or reject by another actor,
    /// apply with commit-confirm, roll back to any earlier version.
    #[command(subcommand)]
    Change(ChangeCommand),
    /// List the `--json` documents, or print one's JSON Schema (docs/json.md).
    Schema {
        /// The document (`portwarden schema` lists them).
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BalanceArgs {
    #[command(subcommand)]
    pub command: Option<BalanceCommand>,
    /// Run only this group (repeatable; default: every group).
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<String>,
    /// Worker processes sharing each listen port (SO_REUSEPORT), one event loop each
    /// [default: one per core]; each holds up to the descriptor limit, so 10,000 proxied
    /// connections (20,000 descriptors) need two.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Option<u32>,
    /// Copy bytes through a buffer instead of splice(2).
    #[arg(long)]
    pub copy: bool,
    /// A worker started by worker 0 (internal).
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_index: u32,
}

#[derive(Debug, Subcommand)]
pub enum BalanceCommand {
    /// The running balancer's groups and backends, summed over its workers; exit 1 when it
    /// is not running or a group has no backend up.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Serve throughput tests (many at once, unlike iperf3 3.12), until SIGINT/SIGTERM.
    Server(BenchServerArgs),
    /// Run one throughput test against `portwarden bench server` or `iperf3 -s`.
    Client(BenchClientArgs),
    /// Connection concurrency and churn against one TCP port (--hold N, or --churn).
    Storm(BenchStormArgs),
    /// A storm worker (started by `bench storm`; its share on stdin).
    #[command(hide = true)]
    StormWorker,
}

#[derive(Debug, Args)]
pub struct BenchServerArgs {
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub bind: std::net::IpAddr,
    /// The port (iperf3's).
    #[arg(short, long, default_value_t = 5201)]
    pub port: u16,
    /// Serve one test, then exit.
    #[arg(short = '1', long)]
    pub one_off: bool,
    /// Tests running at once; one more is told the server is busy.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_tests: u32,
    /// The longest a test may run (asked for, or actually).
    #[arg(long, value_name = "D", default_value = "10m", value_parser = positive_duration)]
    pub max_duration: HumanDuration,
    /// The most bytes one test may move.
    #[arg(long, value_name = "SIZE")]
    pub max_bytes: Option<portwarden_core::units::ByteSize>,
    /// A control connection silent this long is closed.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = positive_duration)]
    pub idle_timeout: HumanDuration,
}

#[derive(Debug, Args)]
pub struct BenchClientArgs {
    /// The server: a host name or address.
    pub host: String,
    /// Its port.
    #[arg(short, long, default_value_t = 5201)]
    pub port: u16,
    /// Parallel streams, each on a thread of its own.
    #[arg(short = 'P', long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub parallel: u32,
    /// Seconds to run.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub time: u32,
    /// Bytes to move instead (exactly), e.g. 1G.
    #[arg(short = 'n', long, value_name = "SIZE", conflicts_with = "time")]
    pub bytes: Option<portwarden_core::units::ByteSize>,
    /// The server sends.
    #[arg(short = 'R', long)]
    pub reverse: bool,
    /// Both ends send at once.
    #[arg(long, conflicts_with = "reverse")]
    pub bidir: bool,
    /// Send with sendfile(2) (no copy from user space).
    #[arg(short = 'Z', long)]
    pub zerocopy: bool,
    /// Socket buffer size, both ways, e.g. 4M.
    #[arg(short = 'w', long, value_name = "SIZE")]
    pub window: Option<portwarden_core::units::ByteSize>,
    /// Bytes per write, e.g. 128K (UDP: per datagram, default 1460).
    #[arg(short = 'l', long, value_name = "SIZE")]
    pub length: Option<portwarden_core::units::ByteSize>,
    /// UDP instead of TCP: paced datagrams, jitter and loss as iperf3 counts them.
    #[arg(short = 'u', long, conflicts_with_all = ["zerocopy", "congestion"])]
    pub udp: bool,
    /// UDP: bits per second per stream, e.g. 100M (0: unlimited; default 1M as iperf3).
    #[arg(short = 'b', long, value_name = "RATE", requires = "udp", value_parser = bitrate)]
    pub bitrate: Option<u64>,
    /// Congestion control (as /proc/sys/net/ipv4/tcp_available_congestion_control names it).
    #[arg(short = 'C', long, value_name = "ALGO")]
    pub congestion: Option<String>,
    /// Seconds between interval reports (0: none).
    #[arg(short = 'i', long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,
    /// TCP_NODELAY on the streams.
    #[arg(short = 'N', long)]
    pub no_delay: bool,
    /// Exit 1 when the received rate is below this: a fraction of the policy's [transfer]
    /// bandwidth (0.8) or a rate (5Gbit).
    #[arg(long, value_name = "FRACTION|RATE", value_parser = fail_below)]
    pub fail_below: Option<portwarden_ops::bench::FailBelow>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["hold", "churn"])))]
pub struct BenchStormArgs {
    /// The port: HOST:PORT ([::1]:PORT for IPv6).
    pub target: String,
    /// Open N connections and keep them (--hold-for), then release them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub hold: Option<u64>,
    /// How long to keep held connections once all are open.
    #[arg(long, value_name = "D", default_value = "10s", requires = "hold")]
    pub hold_for: HumanDuration,
    /// Connections being opened at once while holding (the server's backlog is finite).
    #[arg(long, value_name = "N", default_value_t = 256, requires = "hold", value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub window: u32,
    /// Connect, exchange, close, over and over (closed loop; --rate: open loop).
    #[arg(long)]
    pub churn: bool,
    /// Churn: connections in flight at most.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 64, requires = "churn", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub concurrency: u32,
    /// Churn: new connections per second on a fixed schedule (open loop).
    #[arg(long, value_name = "R", requires = "churn")]
    pub rate: Option<f64>,
    /// Churn: how long to start connections.
    #[arg(
        short = 't',
        long,
        value_name = "D",
        default_value = "10s",
        requires = "churn"
    )]
    pub time: HumanDuration,
    /// Churn: stop after this many connections instead.
    #[arg(short = 'n', long, value_name = "N", requires = "churn", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Churn: event loops (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Written on each connection once open (\r, \n, \t, \\, \xNN are escapes).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub send: String,
    /// Read back before a connection counts as a success (escapes as --send).
    #[arg(long, value_name = "TEXT", conflicts_with = "echo")]
    pub expect: Option<String>,
    /// Expect the payload echoed back.
    #[arg(long)]
    pub echo: bool,
    /// A connection not done within this fails.
    #[arg(long, value_name = "D", default_value = "5s")]
    pub timeout: HumanDuration,
    /// Source addresses used in turn: a list (127.0.0.1,127.0.0.2) or a range
    /// (127.0.0.1-127.0.0.8); each has its own source ports towards the target.
    #[arg(long, value_name = "ADDRS")]
    pub sources: Option<String>,
    /// Worker processes, each with its own descriptor limit (a storm that needs more than
    /// one says how many).
    #[arg(long, value_name = "N")]
    pub processes: Option<u32>,
}

fn bitrate(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    // iperf3's spelling: a number with K, M, G or T, in bits.
    let s2 = match s.chars().last() {
        Some(c) if c.is_ascii_digit() || "KkMGT".contains(c) => format!("{s}bit"),
        _ => s.to_string(),
    };
    s2.parse::<portwarden_core::units::Bandwidth>()
        .map(|b| b.bits_per_sec())
        .map_err(|e| format!("`{s}`: {e} (e.g. 100M, 1G, 0 for unlimited)"))
}

fn fail_below(s: &str) -> Result<portwarden_ops::bench::FailBelow, String> {
    use portwarden_ops::bench::FailBelow;
    if let Ok(f) = s.parse::<f64>() {
        return if f > 0.0 && f <= 1.0 {
            Ok(FailBelow::Fraction(f))
        } else {
            Err(format!(
                "`{s}`: a fraction is over 0 and at most 1; a rate has a unit (5Gbit)"
            ))
        };
    }
    s.parse::<portwarden_core::units::Bandwidth>()
        .map(|b| FailBelow::Rate(b.bits_per_sec()))
        .map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The API's address (a non-loopback one needs --tls-cert/--tls-key or --insecure-http).
    #[arg(long, value_name = "ADDR:PORT", default_value = portwarden_server::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Serve /metrics without a token on a listener of its own.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A Unix socket for local use without tokens (the peer's user acts; root administers).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (said explicitly).
    #[arg(long)]
    pub insecure_http: bool,
    /// Also run the policy's [[balance]] groups (metrics per backend, GET /api/v1/balance);
    /// SIGHUP reloads them with the policy.
    #[arg(long)]
    pub balance: bool,
    /// How often the periodic jobs run.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = positive_duration)]
    pub interval: HumanDuration,
    /// Connections served at once per listener; more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// The log's format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long a client has to send a request's headers (and how long an idle
    /// keep-alive connection stays open).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: HumanDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for a person.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Propose the `--policy` file: validated, its pre-flight run (lock-out guard, nft -c,
    /// a dry check on this host) and its diff against the version in force recorded.
    Request {
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
        /// Take the proposed policy from a git repository instead of `--policy`:
        /// `DIR[@REV[:PATH]]` (REV `HEAD`, PATH `policy.toml` by default).
        #[arg(long, value_name = "DIR[@REV]")]
        from_git: Option<String>,
        /// A ticket in your tracker.
        #[arg(long, value_name = "ID")]
        ticket: Option<String>,
    },
    /// Every change request.
    List,
    /// One change request, with its pre-flight and diff.
    Show {
        /// Its number.
        id: i64,
    },
    /// Approve a change (not your own).
    Approve {
        /// Its number.
        id: i64,
    },
    /// Reject a change (not your own).
    Reject {
        /// Its number.
        id: i64,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Apply an approved change (or, without `[change] require_approval`, a requested
    /// one) through `fw apply`, with commit-confirm.
    Apply {
        /// Its number.
        id: i64,
        /// Deadline for `fw confirm` (0: no confirmation needed).
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        confirm_within: HumanDuration,
        /// Keep the change applied when its `post_apply` hook fails (it is rolled back
        /// otherwise).
        #[arg(long)]
        keep_on_hook_failure: bool,
    },
    /// Back to an earlier applied version (default: the one before the version in force),
    /// through `fw apply`, with commit-confirm.
    Rollback {
        /// At least six hex digits of the version (`portwarden policy history`).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Deadline for `fw confirm` (0: no confirmation needed).
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        confirm_within: HumanDuration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints the secret alone (or `{"name","role","token"}` with --json), once.
    Create {
        /// Its name: the actor the ledger records for its requests.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token; exit 1 if there was none of that name.
    Revoke {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Reads only.
    Read,
    /// Reads and changes (leases, firewall, grants).
    Operate,
    /// Everything, tokens included.
    Admin,
}

impl From<RoleArg> for portwarden_core::auth::Role {
    fn from(r: RoleArg) -> Self {
        use portwarden_core::auth::Role;
        match r {
            RoleArg::Read => Role::Read,
            RoleArg::Operate => Role::Operate,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Lowest severity that makes the command exit 1 (medium: anything worth fixing).
    #[arg(long, value_enum, default_value_t = SeverityArg::Medium, value_name = "SEVERITY")]
    pub fail_on: SeverityArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeverityArg {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; every error is reported with file:line:col.
    Check {
        /// Files to validate.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Write a commented starter policy to stdout or a file.
    Init {
        /// Write here instead of stdout (`-`: stdout; a device or FIFO is written in place).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite an existing file, or replace a symbolic link at FILE (never its target).
        #[arg(long, requires = "output")]
        force: bool,
        /// Draft the services from what listens on this host instead of the starter.
        #[arg(long)]
        from_host: bool,
    },
    /// The policy versions kept in the store: each adoption (`fw apply`, `serve`) with
    /// its version, who, when, and its firewall transaction's state.
    History {
        /// Also write each adoption not yet there as a commit of `policy.toml` in this git
        /// repository (made if missing), by its actor at its time.
        #[arg(long, value_name = "DIR")]
        export_git: Option<PathBuf>,
    },
    /// The text of a kept version (a prefix of its hash, or `current`).
    Show {
        /// At least six hex digits of the version's hash, or `current`.
        #[arg(id = "policy-version", value_name = "VERSION")]
        version: String,
    },
    /// From one policy to another: the line diff, what changes by meaning (services,
    /// pools, zones, settings) and the firewall rules that change. Each side is a kept
    /// version (hash prefix, `current`) or a policy file; one side alone is compared
    /// with the version in force.
    Diff {
        /// The old side (or, alone, the new one).
        #[arg(value_name = "A")]
        a: String,
        /// The new side.
        #[arg(value_name = "B")]
        b: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// A catalog name or alias to show in full.
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only listening sockets (TCP LISTEN, unconnected UDP).
    #[arg(short, long)]
    pub listen: bool,
    /// Only TCP.
    #[arg(short, long)]
    pub tcp: bool,
    /// Only UDP.
    #[arg(short, long)]
    pub udp: bool,
    /// Only IPv4.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only sockets whose local port is N or lies in FIRST-LAST.
    #[arg(long, value_name = "N|RANGE")]
    pub port: Option<PortRange>,
    /// Only sockets in this state (estab, listen, time-wait, unconn, ...); repeatable.
    #[arg(long, value_name = "STATE", value_parser = socket_state)]
    pub state: Vec<portwarden_core::facts::SocketState>,
    /// Only sockets held by this process id (implies -p).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only sockets held by a process with this name or executable (implies -p).
    #[arg(long, value_name = "NAME")]
    pub process: Option<String>,
    /// Show the owning processes.
    #[arg(short = 'p', long)]
    pub processes: bool,
    /// One row per listening port with its connections counted per state.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    /// PORT or PORT/PROTO (tcp, udp); without a protocol both are searched.
    #[arg(value_name = "PORT[/PROTO]", value_parser = port_and_protocol)]
    pub port: PortQuery,
}

/// `who`'s `PORT` or `PORT/PROTO`: the port, and the protocols to search.
#[derive(Debug, Clone)]
pub struct PortQuery {
    pub port: portwarden_core::Port,
    pub protocols: Vec<portwarden_core::Protocol>,
}

#[derive(Debug, Args)]
pub struct AllocArgs {
    /// The service (declared in the policy).
    pub service: String,
    /// Allocate from this pool instead of the service's own.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Ask for this exact port.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Lease lifetime [default: the pool's lease_ttl, else 24h].
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<HumanDuration>,
    /// A label naming the lease's owner, which `renew` and `release` check [default: the
    /// invoking user's name]; the ledger records who acted apart from it.
    #[arg(long, value_name = "OWNER", value_parser = owner_label)]
    pub owner: Option<String>,
    /// Allocate this many leases (each in its own transaction).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Seed for the random start of the pool scan (reproducible picks).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// Skip the bind probe that double-checks a chosen port is free.
    #[arg(long)]
    pub no_probe: bool,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Lease id.
    pub id: i64,
    /// New lifetime from now [default: the pool's lease_ttl, else 24h].
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<HumanDuration>,
    /// The owner label the lease was given [default: the invoking user's name].
    #[arg(long, value_name = "OWNER", value_parser = owner_label)]
    pub owner: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Lease id.
    pub id: i64,
    /// The owner label the lease was given [default: the invoking user's name].
    #[arg(long, value_name = "OWNER", value_parser = owner_label)]
    pub owner: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReclaimArgs {
    /// Show what would be reclaimed without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(subcommand)]
    pub command: Option<LogCommand>,
    /// Only records from the last DURATION (e.g. 24h, 7d; 0: since the epoch, all).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<HumanDuration>,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Walk every link of the hash chain, and check it against its head anchor (and an
    /// exported head); exit 1 naming the first bad record or what else is wrong.
    Verify {
        /// The head exported earlier (`log head`), as SEQ:HASH: the chain must still reach
        /// it, unchanged.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
        /// Re-create dropped or altered append-only triggers, close an open retention gate,
        /// and adopt the head as a missing head anchor (each recorded in the ledger).
        #[arg(long)]
        repair: bool,
    },
    /// Print the head (last sequence number and hash) for an outside copy.
    Head,
    /// Export every record.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Delete records older than the policy's retention, through a checkpoint record.
    Prune {
        /// Show what would go without deleting.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
}

#[derive(Debug, Args)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub command: Option<PoolsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// Add the pools' ranges to net.ipv4.ip_local_reserved_ports, keeping what is there.
    Reserve {
        /// Print the new value without writing it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// Write to FILE instead of stdout (`-`: stdout; a device or FIFO is written in place,
    /// a regular file replaced atomically).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace a symbolic link at FILE (the link, never its target) instead of refusing.
    #[arg(long, requires = "output")]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// Markdown.
    Md,
    /// One self-contained HTML page.
    Html,
    /// JSON.
    Json,
    /// CSV of the audit table.
    Csv,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("outputs").multiple(true)))]
pub struct ScanArgs {
    /// Host names, addresses or CIDR blocks.
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Ports: `22,80,1000-2000`, or `-` for all (`-p-`).
    #[arg(
        short = 'p',
        long = "ports",
        value_name = "SPEC",
        allow_hyphen_values = true,
        value_parser = port_list
    )]
    pub ports: Option<String>,
    /// The N most frequent ports (default 1000 when -p is not given): nmap's ranking from
    /// its nmap-services file when installed, as nmap's --top-ports; else the catalog's
    /// ports (about 730 TCP ports; a larger N scans them all).
    #[arg(long, value_name = "N", conflicts_with = "ports")]
    pub top: Option<usize>,
    /// Ports to leave out.
    #[arg(long, value_name = "SPEC", value_parser = port_list)]
    pub exclude_ports: Option<String>,
    /// UDP scan instead of TCP (`-sU` works too).
    #[arg(short = 'u', long)]
    pub udp: bool,
    /// SYN scan (`-sS`): raw packets with stateless cookies, no connection and no socket
    /// per probe; needs CAP_NET_RAW. The default as root for targets off loopback.
    #[arg(long, conflicts_with_all = ["connect", "udp"])]
    pub syn: bool,
    /// Connect scan (`-sT`): full TCP connections, no privilege needed; the default
    /// without root and for loopback targets.
    #[arg(long, conflicts_with = "udp")]
    pub connect: bool,
    /// Skip host discovery (`-Pn`): scan every target even if it answers no ping. By
    /// default (with raw sockets) a host is scanned only if it answers an ICMP echo or a
    /// SYN to port 80 or 443; the others are reported down.
    #[arg(long)]
    pub no_ping: bool,
    /// Probes per second, 1 to 1000000 (default: paced by the answers, like nmap's
    /// congestion control).
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,
    /// Detect services and TLS on open ports (`-sV` works too).
    #[arg(short = 's', long = "service")]
    pub service: bool,
    /// nmap's service probe database for `-sV`: its probes are sent and its match lines
    /// name the service, product and version (default: Debian's nmap package's file, when
    /// installed; `none`: the built-in probes only).
    #[arg(long, value_name = "FILE|none", requires = "service")]
    pub probes_db: Option<PathBuf>,
    /// Largest per-probe timeout (the timeout adapts to the measured RTT below it).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub timeout: HumanDuration,
    /// Retries for unanswered probes.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// Refuse CIDR blocks larger than this many addresses.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_hosts: u64,
    /// Show what changed since a previous `scan --json` output.
    #[arg(long, value_name = "OLD.json")]
    pub diff: Option<PathBuf>,
    /// Also write nmap's greppable format (`-oG FILE` works too; `-`: stdout; a device
    /// or FIFO is written in place, a regular file replaced atomically).
    #[arg(long = "oG", value_name = "FILE", group = "outputs")]
    pub grepable: Option<PathBuf>,
    /// Also write nmap's XML format (`-oX FILE` works too; same rules as `-oG`).
    #[arg(long = "oX", value_name = "FILE", group = "outputs")]
    pub xml: Option<PathBuf>,
    /// Replace a symbolic link at an -oG/-oX path (the link, never its target) instead
    /// of refusing.
    #[arg(long, requires = "outputs")]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum FwCommand {
    /// Print the ruleset the policy renders to.
    Plan {
        /// nftables (`nft -f` input) or iptables (`iptables-restore --noflush` input for
        /// IPv4 then IPv6, for hosts without nftables).
        #[arg(long, value_enum, default_value_t = FwFormat::Nft)]
        format: FwFormat,
    },
    /// Compare the rendered ruleset with the last applied one, and the live table with
    /// what nft listed after that apply.
    Diff,
    /// Check, snapshot and apply atomically; roll back unless confirmed in time.
    Apply {
        /// Deadline for `fw confirm` (0: no confirmation needed).
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        confirm_within: HumanDuration,
        /// nftables, or iptables-restore into our own chain for hosts without nftables
        /// (auto: nftables when `nft` is installed).
        #[arg(long, value_enum, default_value_t = FwBackend::Auto)]
        backend: FwBackend,
        /// Apply even when a zone names an interface this host lacks (its rules match
        /// nothing until the interface appears; `fw plan` only warns).
        #[arg(long)]
        allow_missing_interface: bool,
    },
    /// Keep the pending apply (run it from a new connection, to prove you still get in).
    Confirm,
    /// Restore the table as it was before the pending apply.
    Rollback,
    /// The live table and any pending apply.
    Status,
    /// Waits for a pending apply's deadline and rolls it back (started by `apply`).
    #[command(hide = true)]
    Watch {
        /// Transaction id.
        #[arg(long)]
        txn: i64,
    },
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// PORT or PORT/PROTO (tcp by default).
    #[arg(
        value_name = "PORT[/PROTO]",
        required_unless_present = "file",
        value_parser = port_with_protocol
    )]
    pub port: Option<String>,
    /// The source address to admit.
    #[arg(
        long = "from",
        value_name = "ADDR",
        required_unless_present = "file",
        value_parser = ip_address
    )]
    pub from: Option<String>,
    /// How long the grant lasts.
    #[arg(
        long = "for",
        value_name = "DURATION",
        required_unless_present = "file",
        value_parser = duration
    )]
    pub duration: Option<String>,
    /// Grants in batch, one `PORT[/PROTO] ADDR DURATION` per line (`-`: stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["port", "from", "duration"])]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// PORT or PORT/PROTO (tcp by default).
    #[arg(
        value_name = "PORT[/PROTO]",
        required_unless_present = "file",
        value_parser = port_with_protocol
    )]
    pub port: Option<String>,
    /// The source address.
    #[arg(
        long = "from",
        value_name = "ADDR",
        required_unless_present = "file",
        value_parser = ip_address
    )]
    pub from: Option<String>,
    /// Revocations in batch, one `PORT[/PROTO] ADDR` per line (`-`: stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["port", "from"])]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FwFormat {
    /// nftables.
    Nft,
    /// iptables-restore.
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FwBackend {
    /// nftables when installed, else iptables.
    Auto,
    /// nftables.
    Nft,
    /// iptables-restore.
    Iptables,
}

// Flags checked at parse time: a bad port, duration or address is a usage error (exit 2)
// before anything runs. Where a command also reads the same values from a file (grants),
// the flag stays text and is parsed again by the same code the file goes through.

/// `PORT` or `PORT/PROTO`, either protocol when none is given.
fn port_and_protocol(s: &str) -> Result<PortQuery, String> {
    let (p, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (s, None),
    };
    let port = p
        .parse()
        .map_err(|e: portwarden_core::port::PortError| e.to_string())?;
    let protocols = match proto {
        None => portwarden_core::Protocol::ALL.to_vec(),
        Some(x) => vec![
            x.parse()
                .map_err(|e: portwarden_core::port::PortError| e.to_string())?,
        ],
    };
    Ok(PortQuery { port, protocols })
}

/// `PORT` or `PORT/PROTO` (tcp by default).
/// A socket state as `ss` names it (`estab`, `listen`, `time-wait`, …).
fn socket_state(s: &str) -> Result<portwarden_core::facts::SocketState, String> {
    use portwarden_core::facts::SocketState;
    SocketState::parse(s).ok_or_else(|| {
        format!(
            "unknown socket state `{s}`: use one of {}",
            SocketState::ALL
                .map(|s| s.as_str().to_ascii_lowercase())
                .join(", ")
        )
    })
}

/// An owner label: 1 to 64 characters, none of them a control or format character (it
/// is shown in tables and recorded in the ledger).
fn owner_label(s: &str) -> Result<String, String> {
    portwarden_core::auth::check_owner_label(s)?;
    Ok(s.to_string())
}

fn port_with_protocol(s: &str) -> Result<String, String> {
    s.parse::<PortProto>().map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// One IP address a connection can come from: not unspecified, multicast or broadcast
/// (`0.0.0.0` would open the port to nobody, not to everyone).
fn ip_address(s: &str) -> Result<String, String> {
    let a: std::net::IpAddr = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address"))?;
    if portwarden_core::addr::never_a_source(a) {
        return Err(format!(
            "`{s}` is never the source of a connection (unspecified, multicast or broadcast)"
        ));
    }
    Ok(s.to_string())
}

/// A duration (`90s`, `2h`, `7d`).
fn duration(s: &str) -> Result<String, String> {
    s.parse::<HumanDuration>().map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A port list like nmap's `-p` (`22,80,8000-8100`, `-`).
fn port_list(s: &str) -> Result<String, String> {
    portwarden_core::targets::parse_ports(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

impl From<SeverityArg> for portwarden_core::findings::Severity {
    fn from(s: SeverityArg) -> Self {
        use portwarden_core::findings::Severity;
        match s {
            SeverityArg::Info => Severity::Info,
            SeverityArg::Low => Severity::Low,
            SeverityArg::Medium => Severity::Medium,
            SeverityArg::High => Severity::High,
            SeverityArg::Critical => Severity::Critical,
        }
    }
}

impl From<FwBackend> for portwarden_ops::fw::Backend {
    fn from(b: FwBackend) -> Self {
        use portwarden_ops::fw::Backend;
        match b {
            FwBackend::Auto => Backend::Auto,
            FwBackend::Nft => Backend::Nft,
            FwBackend::Iptables => Backend::Iptables,
        }
    }
}

impl From<FwFormat> for portwarden_ops::fw::Backend {
    fn from(f: FwFormat) -> Self {
        use portwarden_ops::fw::Backend;
        match f {
            FwFormat::Nft => Backend::Nft,
            FwFormat::Iptables => Backend::Iptables,
        }
    }
}

/// A job interval: at least a second.
fn positive_duration(s: &str) -> Result<HumanDuration, String> {
    let d: HumanDuration = s
        .parse()
        .map_err(|e: portwarden_core::units::UnitError| e.to_string())?;
    if d.get() < std::time::Duration::from_secs(1) {
        return Err(format!(
            "`{s}` is under a second: the jobs run at most once a second"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subcommand_is_a_valid_clap_command() {
        // clap checks a subcommand's arguments only when it is parsed: all of them, here.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
