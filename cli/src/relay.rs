//! `kith relay`: a headless store-and-forward node for other people's encrypted messages.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kith_node::relay::{
    DEFAULT_MAX_CIRCUITS, DEFAULT_MAX_CIRCUITS_PER_PEER, DEFAULT_MAX_MESSAGES_PER_RECIPIENT,
    DEFAULT_MAX_PREKEY_USERS, DEFAULT_MAX_RESERVATIONS, DEFAULT_SENDER_BURST, DEFAULT_SENDER_RATE,
    DEFAULT_STRANGER_BURST, DEFAULT_STRANGER_RATE, RelayConfig,
};
use kith_node::{Node, NodeConfig};

use crate::conn::parse_addrs;

/// Operator settings of `kith relay`.
#[derive(Args, Debug)]
pub(crate) struct RelayArgs {
    /// Listen address (repeatable). Default: all interfaces, TCP port 4001 and QUIC port 4001.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Bootstrap peer for the DHT, with its /p2p/<peer-id> (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// An address users reach this relay at that it cannot see itself, e.g. its public
    /// address behind a cloud provider's NAT or a port forward (repeatable). Default: its
    /// listen addresses.
    #[arg(long, value_name = "MULTIADDR")]
    external_address: Vec<String>,
    /// Most circuit reservations held by users behind NAT.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RESERVATIONS)]
    max_reservations: usize,
    /// Most connections relayed at once; 0 relays none (the relay then only holds mail and
    /// files for users it cannot put through).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CIRCUITS)]
    max_circuits: usize,
    /// Most connections relayed to or from one peer.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CIRCUITS_PER_PEER)]
    max_circuits_per_peer: usize,
    /// Most bytes one relayed connection carries each way (suffixes K, M, G); attachments
    /// never go over a relayed connection.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_size)]
    max_circuit_bytes: u64,
    /// Longest life of one relayed connection (e.g. 10m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    max_circuit_duration: Duration,
    /// Most messages waiting for one recipient.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_MESSAGES_PER_RECIPIENT)]
    max_messages_per_recipient: u64,
    /// Most bytes waiting for one recipient (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "100M", value_parser = parse_size)]
    max_bytes_per_recipient: u64,
    /// Most message bytes the relay stores in all: its disk budget (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "10G", value_parser = parse_size)]
    max_store_bytes: u64,
    /// Most attachment bytes held for one recipient (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "4G", value_parser = parse_size)]
    max_blob_bytes_per_recipient: u64,
    /// Most attachment bytes the relay stores in all: its blob disk budget (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "50G", value_parser = parse_size)]
    max_blob_store_bytes: u64,
    /// Largest message accepted, in bytes (suffixes K, M; at most 256K, the protocol's limit).
    #[arg(long, value_name = "BYTES", default_value = "256K", value_parser = parse_size)]
    max_envelope_bytes: u64,
    /// Messages one sender may deposit per second, on average.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SENDER_RATE)]
    sender_rate: f64,
    /// Messages one sender may deposit in a burst.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SENDER_BURST)]
    sender_burst: f64,
    /// Messages without an access key (strangers' first messages) one recipient may receive
    /// in a burst.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STRANGER_BURST)]
    stranger_burst: f64,
    /// Messages without an access key one recipient may receive per hour, on average.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STRANGER_RATE * 3600.0)]
    stranger_per_hour: f64,
    /// How long a message waits for its recipient before it is deleted unread
    /// (e.g. 14d, 36h, 90m).
    #[arg(long, value_name = "DURATION", default_value = "14d", value_parser = parse_duration)]
    ttl: Duration,
    /// Most users whose prekeys the relay serves.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PREKEY_USERS)]
    max_prekey_users: usize,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464): stored messages and
    /// bytes, deposits, fetches, refusals by reason, connected peers, circuit reservations and
    /// relayed connections.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// Parses a byte count with an optional K, M or G suffix (powers of 1024).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => {
            return Err(format!("`{text}`: expected a byte count like 1048576, 512K, 100M or 10G"));
        }
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{text}`: not a byte count"))?;
    n.checked_mul(multiplier).ok_or_else(|| format!("`{text}`: too large"))
}

/// Parses a duration like `14d`, `36h`, `90m` or `30s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("`{text}`: expected a duration like 14d, 36h, 90m or 30s");
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds: u64 = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    let n: u64 = text.get(..text.len() - 1).unwrap_or_default().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("`{text}`: must be longer than zero"));
    }
    Ok(Duration::from_secs(n.checked_mul(seconds).ok_or_else(bad)?))
}

impl RelayArgs {
    fn config(&self, dir: &Path) -> anyhow::Result<NodeConfig> {
        let mut config = NodeConfig::new(dir);
        config.listen = if self.listen.is_empty() {
            parse_addrs(
                &["/ip4/0.0.0.0/tcp/4001".into(), "/ip4/0.0.0.0/udp/4001/quic-v1".into()],
                "--listen",
            )?
        } else {
            parse_addrs(&self.listen, "--listen")?
        };
        config.bootstrap = parse_addrs(&self.bootstrap, "--bootstrap")?;
        config.external_addresses = parse_addrs(&self.external_address, "--external-address")?;
        if self.max_reservations == 0 || self.max_circuits_per_peer == 0 {
            anyhow::bail!("--max-reservations and --max-circuits-per-peer must be at least 1");
        }
        // A relay is infrastructure: it serves the DHT and does not announce itself on a LAN.
        config.mdns = false;
        config.dht_server = true;
        let max_envelope_bytes = usize::try_from(self.max_envelope_bytes)
            .ok()
            .filter(|n| *n <= kith_node::kith_protocol::limits::MAX_ENVELOPE_BYTES && *n > 0)
            .context("--max-envelope-bytes: between 1 and 256K")?;
        if self.sender_rate <= 0.0 || self.sender_burst < 1.0 {
            anyhow::bail!("--sender-rate must be above 0 and --sender-burst at least 1");
        }
        if self.stranger_per_hour < 0.0 || self.stranger_burst < 0.0 {
            anyhow::bail!("--stranger-per-hour and --stranger-burst must not be negative");
        }
        let mut relay = RelayConfig::default();
        relay.max_messages_per_recipient = self.max_messages_per_recipient;
        relay.max_bytes_per_recipient = self.max_bytes_per_recipient;
        relay.max_total_bytes = self.max_store_bytes;
        relay.max_envelope_bytes = max_envelope_bytes;
        relay.sender_rate = self.sender_rate;
        relay.sender_burst = self.sender_burst;
        relay.stranger_rate = self.stranger_per_hour / 3600.0;
        relay.stranger_burst = self.stranger_burst;
        relay.ttl = self.ttl;
        relay.max_prekey_users = self.max_prekey_users;
        relay.metrics = self.metrics;
        relay.max_blob_bytes_per_recipient = self.max_blob_bytes_per_recipient;
        relay.max_blob_total_bytes = self.max_blob_store_bytes;
        relay.circuits.max_reservations = self.max_reservations;
        relay.circuits.max_circuits = self.max_circuits;
        relay.circuits.max_circuits_per_peer = self.max_circuits_per_peer;
        relay.circuits.max_circuit_bytes = self.max_circuit_bytes;
        relay.circuits.max_circuit_duration = self.max_circuit_duration;
        config.relay_service = Some(relay);
        Ok(config)
    }
}

/// Runs the relay in the foreground until Ctrl-C or SIGTERM.
#[allow(clippy::print_stdout, reason = "the relay reports its addresses on stdout")]
pub(crate) async fn run(dir: &Path, args: &RelayArgs) -> anyhow::Result<()> {
    let mut config = args.config(dir)?;
    config.protection = crate::unlock::for_open_or_create(dir)?;
    let node = Node::start_or_create(config).await?;
    say!("kith relay {}", node.peer_id());
    for address in node.addresses().await? {
        say!("listening: {address}");
    }
    if let Some(addr) = node.metrics_addr() {
        say!("metrics: http://{addr}/metrics");
    }
    let peer = node.peer_id();
    let announced: Vec<String> = if args.external_address.is_empty() {
        node.addresses().await?.iter().map(ToString::to_string).collect()
    } else {
        args.external_address.iter().map(|a| format!("{a}/p2p/{peer}")).collect()
    };
    let list = announced.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    say!("for users, in kith.toml in their profile directory:");
    say!("bootstrap = [{list}]");
    say!("relays = [{list}]");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    node.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use kith_node::relay::{DEFAULT_MAX_BYTES_PER_RECIPIENT, DEFAULT_MAX_TOTAL_BYTES};

    use super::*;

    #[test]
    fn the_documented_defaults_are_the_library_defaults() {
        assert_eq!(parse_size("100M"), Ok(DEFAULT_MAX_BYTES_PER_RECIPIENT));
        assert_eq!(parse_size("10G"), Ok(DEFAULT_MAX_TOTAL_BYTES));
        assert_eq!(
            parse_size("256K").map(usize::try_from),
            Ok(Ok(kith_node::kith_protocol::limits::MAX_ENVELOPE_BYTES))
        );
        assert_eq!(parse_duration("14d"), Ok(kith_node::relay::DEFAULT_TTL));
    }

    #[test]
    fn sizes_and_durations_parse_or_say_why() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
    }
}
