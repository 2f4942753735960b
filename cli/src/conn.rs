//! The CLI's connection to a node: the running daemon's socket if there is one, otherwise an
//! in-process node on the same profile. Both speak the same API (`kith_node::rpc`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kith_node::rpc::{self, EventJson, RpcClient};
use kith_node::{Node, NodeConfig};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::{FileConfig, pick};

/// Network options of commands that may start their own node.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct NetArgs {
    /// Listen address (repeatable). Default: all interfaces, TCP and QUIC, ports picked by the OS.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) listen: Vec<String>,
    /// Bootstrap peer for the DHT, with its /p2p/<peer-id> (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<String>,
    /// Do not announce or discover peers on the LAN with mDNS.
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Serve the DHT (Kademlia server mode) from the start; otherwise the node does so once
    /// one of its addresses is confirmed reachable from outside (AutoNAT).
    #[arg(long)]
    pub(crate) dht_server: bool,
    /// A home relay, with its /p2p/<peer-id> (repeatable): it holds messages for you while
    /// you are offline, serves your prekeys and, while you are behind NAT, relays connections
    /// to you until they are upgraded to direct ones; it is shared in your contact string.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) relay: Vec<String>,
}

impl NetArgs {
    /// The node settings these options describe.
    pub(crate) fn config(&self, data_dir: &Path) -> anyhow::Result<NodeConfig> {
        let file = FileConfig::load(data_dir)?;
        let mut config = NodeConfig::new(data_dir);
        let (listen, source) = pick(&self.listen, "--listen", &file.listen, "listen");
        if !listen.is_empty() {
            config.listen = parse_addrs(listen, &source)?;
        }
        let (bootstrap, source) =
            pick(&self.bootstrap, "--bootstrap", &file.bootstrap, "bootstrap");
        config.bootstrap = parse_addrs(bootstrap, &source)?;
        config.mdns = !self.no_mdns;
        if let Some(requests) = file.message_requests {
            config.engine.accept_unknown = requests;
        }
        config.dht_server = self.dht_server;
        let (relays, source) = pick(&self.relay, "--relay", &file.relays, "relays");
        config.relays = parse_addrs(relays, &source)?;
        if let Some(bad) = config
            .relays
            .iter()
            .find(|a| !a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_))))
        {
            anyhow::bail!("{source} {bad}: the address must end in /p2p/<peer-id>");
        }
        Ok(config)
    }
}

pub(crate) fn parse_addrs(addrs: &[String], flag: &str) -> anyhow::Result<Vec<libp2p::Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse().with_context(|| {
                format!("{flag} {a}: not a valid multiaddr (e.g. /ip4/127.0.0.1/tcp/4001)")
            })
        })
        .collect()
}

/// A connection to the profile's node.
pub(crate) enum Conn {
    /// The running daemon.
    Daemon { client: RpcClient, data_dir: PathBuf },
    /// A node started by this command, stopped by [`Conn::close`].
    Local(Node),
}

impl Conn {
    /// Connects to the daemon, or starts an in-process node with `net` (offline if `None`).
    pub(crate) async fn open(data_dir: &Path, net: Option<&NetArgs>) -> anyhow::Result<Self> {
        if let Ok(client) = RpcClient::connect(data_dir).await {
            return Ok(Self::Daemon { client, data_dir: data_dir.to_owned() });
        }
        let mut config = match net {
            Some(net) => net.config(data_dir)?,
            None => NodeConfig::offline(data_dir),
        };
        config.protection = crate::unlock::for_open(data_dir)?;
        Ok(Self::Local(Node::start(config).await?))
    }

    /// Whether this is the daemon.
    pub(crate) fn is_daemon(&self) -> bool {
        matches!(self, Self::Daemon { .. })
    }

    /// Calls an API method.
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let result = match self {
            Self::Daemon { client, .. } => client.call(method, params).await,
            Self::Local(node) => rpc::dispatch(node, method, params).await,
        };
        result.map_err(|e| anyhow::anyhow!(e.message))
    }

    /// Events as JSON (see `kith_node::rpc::EventJson`).
    pub(crate) async fn events(&self) -> anyhow::Result<mpsc::Receiver<Value>> {
        let (tx, rx) = mpsc::channel(1024);
        match self {
            Self::Daemon { data_dir, .. } => {
                let mut client = RpcClient::connect(data_dir).await?;
                client
                    .call("subscribe", Value::Null)
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                tokio::spawn(async move {
                    while let Some(event) = client.next_event().await {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Self::Local(node) => {
                let mut events = node.subscribe();
                tokio::spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(event) => {
                                let Some(json) = EventJson::from_event(&event) else { continue };
                                let Ok(value) = serde_json::to_value(json) else { continue };
                                if tx.send(value).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        }
        Ok(rx)
    }

    /// Stops an in-process node (flushing it); leaves a daemon running.
    pub(crate) async fn close(self) -> anyhow::Result<()> {
        if let Self::Local(node) = self {
            node.shutdown().await?;
        }
        Ok(())
    }
}
