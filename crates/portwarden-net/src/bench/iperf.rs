//! The iperf3 control protocol, which `portwarden bench` speaks as its own: a test is a
//! control connection and its data streams, each opened with the test's 37-byte cookie;
//! the control connection carries one-byte states and length-prefixed JSON (parameters,
//! then both ends' results). Speaking it lets `iperf3 -c` test against our server and our
//! client test against `iperf3 -s`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The cookie: 36 characters and a NUL.
pub const COOKIE_LEN: usize = 37;
/// The largest JSON message accepted (iperf3's are a few hundred bytes; a server's
/// results with its text output a few KiB).
pub const MAX_JSON: usize = 256 * 1024;
/// The most streams a test may ask for (iperf3's own limit).
pub const MAX_STREAMS: u32 = 128;

/// A test's cookie.
pub type Cookie = [u8; COOKIE_LEN];

/// A control state, one signed byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The server starts the test (after every stream is connected).
    TestStart,
    /// Data flows.
    TestRunning,
    /// The client ends the test.
    TestEnd,
    /// The server asks for the parameters.
    ParamExchange,
    /// The server asks for the data streams.
    CreateStreams,
    /// The server gives up (killed).
    ServerTerminate,
    /// The client gives up (interrupted).
    ClientTerminate,
    /// Both ends trade results.
    ExchangeResults,
    /// The client may show the results.
    DisplayResults,
    /// The client is done.
    IperfDone,
    /// The server is busy or the cookie is wrong.
    AccessDenied,
    /// The server failed: two 32-bit error numbers follow.
    ServerError,
}

impl State {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        let v: i8 = match self {
            State::TestStart => 1,
            State::TestRunning => 2,
            State::TestEnd => 4,
            State::ParamExchange => 9,
            State::CreateStreams => 10,
            State::ServerTerminate => 11,
            State::ClientTerminate => 12,
            State::ExchangeResults => 13,
            State::DisplayResults => 14,
            State::IperfDone => 16,
            State::AccessDenied => -1,
            State::ServerError => -2,
        };
        v as u8
    }

    /// The state a byte names; `None` for one no iperf3 sends.
    pub fn from_byte(b: u8) -> Option<State> {
        Some(match b as i8 {
            1 => State::TestStart,
            2 => State::TestRunning,
            4 => State::TestEnd,
            9 => State::ParamExchange,
            10 => State::CreateStreams,
            11 => State::ServerTerminate,
            12 => State::ClientTerminate,
            13 => State::ExchangeResults,
            14 => State::DisplayResults,
            16 => State::IperfDone,
            -1 => State::AccessDenied,
            -2 => State::ServerError,
            _ => return None,
        })
    }
}

/// The error numbers our server sends after `ServerError` (iperf3's `i_errno` values
/// where one fits, so that `iperf3 -c` prints a matching message).
pub mod errno {
    /// The parameters could not be read or are out of range (IERECVPARAMS).
    pub const PARAMS: i32 = 111;
    /// Too many tests run at once (IESERVERBUSY, shown as "the server is busy").
    pub const BUSY: i32 = 112;
    /// The streams did not all connect in time (IEACCEPT).
    pub const STREAMS: i32 = 104;
    /// The test ran past the server's `--max-duration` or `--max-bytes`.
    pub const LIMIT: i32 = 150;
}

/// What an error number means, in our words.
pub fn errno_text(code: i32) -> &'static str {
    match code {
        errno::PARAMS => "the server refused the test's parameters",
        errno::BUSY => "the server is busy (too many tests at once)",
        errno::STREAMS => "the server did not get every data stream in time",
        errno::LIMIT => "the test passed the server's limit on duration or bytes",
        _ => "the server failed",
    }
}

/// A fresh cookie from the kernel's random source (iperf3's alphabet).
pub fn cookie() -> io::Result<Cookie> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut raw = [0u8; COOKIE_LEN - 1];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let mut c = [0u8; COOKIE_LEN];
    for (i, r) in raw.iter().enumerate() {
        c[i] = ALPHABET[usize::from(*r) % ALPHABET.len()];
    }
    Ok(c)
}

/// The id of the `i`-th stream (from 0) as iperf3 numbers them: 1, 3, 4, 5, …
pub fn stream_id(i: usize) -> i64 {
    if i == 0 { 1 } else { i as i64 + 2 }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A test's parameters, as the client sends them (iperf3's names; numbers as JSON
/// numbers, flags as `true`). Fields we do not know are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Params {
    /// A TCP test.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tcp: bool,
    /// A UDP test.
    #[serde(default, skip_serializing_if = "is_false")]
    pub udp: bool,
    /// Seconds left out at the start.
    #[serde(default)]
    pub omit: u32,
    /// Seconds the test lasts (absent with `num`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u32>,
    /// Bytes the test moves, in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num: Option<u64>,
    /// Blocks the test moves (iperf3 `-k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blockcount: Option<u64>,
    /// Parallel streams.
    #[serde(default = "one")]
    pub parallel: u32,
    /// The server sends.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverse: bool,
    /// Both send.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bidirectional: bool,
    /// Socket buffer size (`-w`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// Block (write) size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    /// Target bit rate (UDP; paced TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// TCP_NODELAY.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nodelay: bool,
    /// Congestion control algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion: Option<String>,
    /// 64-bit UDP packet counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_counters_64bit: Option<i64>,
    /// The client's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
}

fn one() -> u32 {
    1
}

/// A count that iperf3 writes as a number of any kind: -1 for "unknown" comes as
/// 18446744073709551615 from some versions (an unsigned -1), and counts as floats from
/// others.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(-1),
        _ => -1,
    })
}

fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = lenient(d)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

impl Params {
    /// The test's byte count; iperf3 writes 0 for "none".
    pub fn bytes(&self) -> Option<u64> {
        self.num.filter(|&n| n > 0)
    }
}

/// One stream's figures in a results message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamResult {
    /// The stream's id ([`stream_id`]).
    #[serde(deserialize_with = "lenient")]
    pub id: i64,
    /// Bytes this end sent (sender) or received (receiver).
    #[serde(deserialize_with = "lenient_u64")]
    pub bytes: u64,
    /// Retransmitted segments (sender), -1 where unknown.
    #[serde(default, deserialize_with = "lenient")]
    pub retransmits: i64,
    /// UDP jitter, seconds.
    #[serde(default)]
    pub jitter: f64,
    /// UDP datagrams lost.
    #[serde(default, deserialize_with = "lenient")]
    pub errors: i64,
    /// Lost in the omitted seconds.
    #[serde(default, deserialize_with = "lenient")]
    pub omitted_errors: i64,
    /// UDP datagrams.
    #[serde(default, deserialize_with = "lenient")]
    pub packets: i64,
    /// Datagrams in the omitted seconds.
    #[serde(default, deserialize_with = "lenient")]
    pub omitted_packets: i64,
    /// Seconds from the test's start.
    #[serde(default)]
    pub start_time: f64,
    /// Seconds from the test's start.
    #[serde(default)]
    pub end_time: f64,
}

/// One end's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// CPU use of the process, percent of one core.
    pub cpu_util_total: f64,
    /// User part.
    pub cpu_util_user: f64,
    /// System part.
    pub cpu_util_system: f64,
    /// 1 when this end sent on TCP and counted retransmits, 0 otherwise, -1 unknown.
    #[serde(deserialize_with = "lenient")]
    pub sender_has_retransmits: i64,
    /// The congestion control used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion_used: Option<String>,
    /// Every stream.
    pub streams: Vec<StreamResult>,
}

/// Writes a state byte.
pub fn send_state(w: &mut impl Write, s: State) -> io::Result<()> {
    w.write_all(&[s.byte()])
}

/// Reads a state byte; an unknown byte is an error naming it.
pub fn read_state(r: &mut impl Read) -> io::Result<State> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    State::from_byte(b[0]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown control state {}", b[0] as i8),
        )
    })
}

/// Writes a JSON message: its length (32 bits, big-endian), then the text.
pub fn send_json<T: Serialize>(w: &mut impl Write, v: &T) -> io::Result<()> {
    let text = serde_json::to_vec(v).map_err(io::Error::other)?;
    let mut msg = Vec::with_capacity(4 + text.len());
    msg.extend_from_slice(&(text.len() as u32).to_be_bytes());
    msg.extend_from_slice(&text);
    w.write_all(&msg)
}

/// Reads a JSON message of at most [`MAX_JSON`] bytes.
pub fn read_json<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_JSON {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a control message of {len} bytes (at most {MAX_JSON})"),
        ));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)?;
    serde_json::from_slice(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a control message is not the JSON expected: {e}"),
        )
    })
}

/// The UDP datagram a client opens a stream with (written in host byte order by iperf3),
/// the legacy spelling.
pub const UDP_CONNECT_MSG: u32 = 123_456_789;
/// The server's answer to [`UDP_CONNECT_MSG`].
pub const UDP_CONNECT_REPLY: u32 = 987_654_321;
/// The newer spellings (iperf3 3.17 and later).
pub const UDP_CONNECT_MSG_NEW: u32 = 0x3637_3839;
/// The newer answer.
pub const UDP_CONNECT_REPLY_NEW: u32 = 0x3938_3736;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_bytes_are_refused() {
        for s in [
            State::TestStart,
            State::TestRunning,
            State::TestEnd,
            State::ParamExchange,
            State::CreateStreams,
            State::ServerTerminate,
            State::ClientTerminate,
            State::ExchangeResults,
            State::DisplayResults,
            State::IperfDone,
            State::AccessDenied,
            State::ServerError,
        ] {
            assert_eq!(State::from_byte(s.byte()), Some(s));
        }
        assert_eq!(State::from_byte(3), None);
        assert!(read_state(&mut &[77u8][..]).is_err());
    }

    #[test]
    fn iperf3_parameters_parse_and_unknown_fields_are_ignored() {
        let text = br#"{"tcp":true,"omit":0,"time":10,"parallel":2,"reverse":true,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;
        let mut msg = (text.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(text);
        let p: Params = read_json(&mut &msg[..]).unwrap();
        assert!(p.tcp && p.reverse && !p.udp);
        assert_eq!((p.time, p.parallel, p.len), (Some(10), 2, Some(131072)));
    }

    #[test]
    fn hostile_messages_are_errors_not_allocations() {
        // A length of 4 GiB.
        assert!(read_json::<Params>(&mut &[0xff, 0xff, 0xff, 0xff][..]).is_err());
        // Shorter than it says.
        assert!(read_json::<Params>(&mut &[0, 0, 0, 9, b'{'][..]).is_err());
        // Not JSON, or the wrong JSON.
        for body in [
            &b"}{"[..],
            b"[1,2]",
            b"{\"parallel\":-1}",
            b"{\"time\":\"x\"}",
        ] {
            let mut msg = (body.len() as u32).to_be_bytes().to_vec();
            msg.extend_from_slice(body);
            assert!(read_json::<Params>(&mut &msg[..]).is_err(), "{body:?}");
        }
    }

    #[test]
    fn stream_ids_follow_iperf3() {
        let ids: Vec<i64> = (0..4).map(stream_id).collect();
        assert_eq!(ids, [1, 3, 4, 5]);
        let c = cookie().unwrap();
        assert_eq!(c[36], 0);
        assert!(
            c[..36]
                .iter()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b))
        );
    }
}
