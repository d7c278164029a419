//! `ls` and `who`: the socket inventory with owners.
#![allow(missing_docs)]

use portwarden_core::Protocol;
use portwarden_core::facts::{PortSummary, Socket};
use serde::Serialize;

/// `ls`: the sockets that match, like `ss -tuanp`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SocketsDoc {
    pub api: u32,
    /// Whether each socket's owning processes were resolved (`-p`, or a filter on them).
    pub owners: bool,
    pub sockets: Vec<Socket>,
}

/// `ls --summary`: one row per listening port with its connections per state.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SummaryDoc {
    pub api: u32,
    pub owners: bool,
    pub ports: Vec<PortSummary>,
}

/// `who PORT[/PROTO]`: what holds the port, every owning process.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WhoDoc {
    pub api: u32,
    pub port: u16,
    pub protocols: Vec<Protocol>,
    pub sockets: Vec<Socket>,
}
