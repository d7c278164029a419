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
