//! `portwarden bench client`: iperf3's `-J` names (`start`, `intervals`, `end.streams`,
//! `end.sum_sent`, `end.sum_received`, `end.cpu_utilization_percent`) so that scripts and
//! dashboards written for iperf3 read it, and our verdict against the policy's
//! `[transfer]` beside them.

use serde::Serialize;

/// Where the client connected.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConnectingTo {
    pub host: String,
    pub port: u16,
}

/// The test as asked.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TestStart {
    /// "TCP".
    pub protocol: String,
    pub num_streams: u32,
    /// Bytes per write.
    pub blksize: u32,
    pub omit: u32,
    /// Seconds (0 with `bytes`).
    pub duration: u64,
    /// The byte count asked (0: by time).
    pub bytes: u64,
    pub blocks: u64,
    /// 1: the server sent.
    pub reverse: u8,
    /// 1: both sent.
    pub bidir: u8,
    pub tos: u8,
}

/// `start`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Start {
    pub version: String,
    pub connecting_to: ConnectingTo,
    pub cookie: String,
    pub test_start: TestStart,
}

/// One stream over an interval, or over the test (`end.streams[].sender`/`receiver`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StreamFigures {
    /// The stream's id (iperf3 shows its socket there; ids are 1, 3, 4, …).
    pub socket: i64,
    pub start: f64,
    pub end: f64,
    pub seconds: f64,
    pub bytes: u64,
    pub bits_per_second: f64,
    /// Sending streams only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<i64>,
    /// Congestion window, bytes (sending streams in intervals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snd_cwnd: Option<u64>,
    /// Smoothed RTT, µs (sending streams in intervals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rttvar: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_snd_cwnd: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rtt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_rtt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_rtt: Option<u32>,
    /// Whether this end (the client) sent on it.
    pub sender: bool,
}

/// A sum over streams.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Sum {
    pub start: f64,
    pub end: f64,
    pub seconds: f64,
    pub bytes: u64,
    pub bits_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<i64>,
    /// Whether the client sent these bytes.
    pub sender: bool,
    /// UDP (the receiver's count): jitter, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// UDP: datagrams lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_packets: Option<i64>,
    /// UDP: datagrams (the highest packet number received).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// UDP: lost over packets, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_percent: Option<f64>,
    /// UDP: datagrams that came after a later one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_order: Option<u64>,
}

/// One interval.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Interval {
    pub streams: Vec<StreamFigures>,
    pub sum: Sum,
    /// With `--bidir`: the server → client streams' sum (`sum` is client → server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum_bidir_reverse: Option<Sum>,
}

/// Both ends of one stream over the test.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EndStream {
    pub sender: StreamFigures,
    pub receiver: StreamFigures,
}

/// CPU use, percent of one core.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Cpu {
    pub host_total: f64,
    pub host_user: f64,
    pub host_system: f64,
    pub remote_total: f64,
    pub remote_user: f64,
    pub remote_system: f64,
}

/// `end`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct End {
    pub streams: Vec<EndStream>,
    /// The test's direction (client → server, or server → client with `-R`): what the
    /// sender sent.
    pub sum_sent: Sum,
    /// And what the receiver received.
    pub sum_received: Sum,
    /// UDP: iperf3's `end.sum` (the receiver's figures with jitter and loss).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<Sum>,
    /// With `--bidir`: the server → client direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum_sent_bidir_reverse: Option<Sum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum_received_bidir_reverse: Option<Sum>,
    pub cpu_utilization_percent: Cpu,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_tcp_congestion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver_tcp_congestion: Option<String>,
}

/// The measured throughput against the policy's `[transfer]` link and `--fail-below`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Verdict {
    /// What was received, bits per second (with `--bidir`, the slower direction).
    pub measured_bits_per_second: f64,
    /// `[transfer] bandwidth`, if the policy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_bits_per_second: Option<u64>,
    /// Measured over link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_link: Option<f64>,
    /// `--fail-below`, in bits per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_bits_per_second: Option<f64>,
    /// Measured reaches the threshold (true without one).
    pub ok: bool,
}

/// `portwarden bench client`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BenchClientDoc {
    pub api: u32,
    pub start: Start,
    pub intervals: Vec<Interval>,
    pub end: End,
    pub verdict: Verdict,
}

/// Latency of the successful connections, microseconds (log-linear buckets: each within
/// 1.6 % of the value).
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct Latency {
    pub count: u64,
    pub min: Option<u64>,
    pub mean: Option<f64>,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
    pub max: Option<u64>,
}

/// Failed connections by kind.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct StormErrors {
    pub total: u64,
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    /// Source ports towards the target used up (`EADDRNOTAVAIL`).
    pub addr_not_avail: u64,
    /// Out of descriptors or buffers (`EMFILE`, `ENFILE`, `ENOBUFS`).
    pub no_descriptors: u64,
    /// The peer closed before the expected answer.
    pub closed_early: u64,
    /// The answer was not the one expected.
    pub mismatch: u64,
    pub other: u64,
}

/// `storm --churn`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ChurnFigures {
    /// Connections in flight at most.
    pub concurrency: u32,
    /// Open loop: the schedule, connections per second (absent: closed loop).
    pub rate: Option<f64>,
    pub completed: u64,
    pub seconds: f64,
    /// Completed connections per second.
    pub conn_per_second: f64,
    /// Open loop: connections started over a millisecond after their schedule.
    pub late: u64,
    /// From the (scheduled) start to the close.
    pub latency_us: Latency,
}

/// `storm --hold`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HoldFigures {
    pub requested: u64,
    pub attempted: u64,
    pub established: u64,
    /// From the first connect to the last connection open or failed.
    pub establish_seconds: f64,
    pub held_seconds: f64,
    /// Held connections the server closed while held.
    pub closed_by_peer: u64,
    /// Held connections we closed at the end.
    pub released: u64,
    /// Connect (and answer) time of each.
    pub connect_us: Latency,
}

/// The process listening on the target, when it is on this host.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ServerMemory {
    pub pid: u32,
    pub command: String,
    /// Resident memory before the storm, KiB.
    pub rss_kib_before: u64,
    /// Resident memory with every connection held (hold) or at the end (churn), KiB.
    pub rss_kib_during: u64,
}

/// Whether the port holds what the policy says it is built for.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StormVerdict {
    /// The policy's service on the target port.
    pub service: Option<String>,
    /// Its `max_conn`.
    pub max_conn: Option<u32>,
    /// Connections that failed (a run with failures fails).
    pub failed: u64,
    /// Held connections, when holding.
    pub held: Option<u64>,
    /// Why the verdict is what it is.
    pub reason: String,
    pub ok: bool,
}

/// `portwarden bench storm --json`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BenchStormDoc {
    pub api: u32,
    /// The target as given.
    pub host: String,
    pub port: u16,
    /// The address connected to.
    pub addr: String,
    /// Source addresses used in turn (empty: the kernel's choice).
    pub sources: Vec<String>,
    /// "churn" or "hold".
    pub mode: String,
    /// Processes the storm ran in.
    pub processes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldFigures>,
    pub errors: StormErrors,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerMemory>,
    pub verdict: StormVerdict,
}
