//! # kith-tests
//!
//! Tests that cross crates: the real `kith` binary driven like a user or a script would, and
//! (with kith-node's network layer) multi-node, fault and namespace tests. This library holds
//! their shared helpers.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kith_node::kith_core::engine::Event;
use kith_node::kith_core::model::Message;
use kith_node::{Node, NodeConfig, NodeEvent};
use libp2p::Multiaddr;

/// The path of the `kith` binary, built once per test run (in the test profile's target
/// directory) with the same cargo that runs the tests.
pub fn kith_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
            let out = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "kith",
                    "--bin",
                    "kith",
                    "--message-format=short",
                    "--manifest-path",
                    manifest,
                ])
                .output()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building kith failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
                });
            Ok(target.join("debug").join("kith"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Sets the environment every `kith` a test runs gets: profiles whose key takes no
/// passphrase (`KITH_NO_PASSPHRASE`; the tests of passphrases set their own), no profile from
/// the caller's environment.
pub fn test_env(command: &mut Command) -> &mut Command {
    command
        .env("KITH_NO_PASSPHRASE", "true")
        .env_remove("KITH_PASSPHRASE_FILE")
        .env_remove("KITH_DATA_DIR")
}

/// The `kith` binary as a command with [`test_env`].
pub fn kith_command() -> anyhow::Result<Command> {
    let mut command = Command::new(kith_binary()?);
    test_env(&mut command);
    Ok(command)
}

/// Runs `kith` with `args` and the profile `data_dir`, returning its output.
pub fn kith(data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(kith_command()?.arg("--data-dir").arg(data_dir).args(args).output()?)
}

/// Runs `kith` with `args` and the profile `data_dir`, `input` on its standard input.
pub fn kith_with_input(
    data_dir: &std::path::Path,
    args: &[&str],
    input: &[u8],
) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = kith_command()?
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    // A child that refuses early closes its end: what it says is in its output.
    let _ = stdin.write_all(input);
    drop(stdin);
    Ok(child.wait_with_output()?)
}

/// A node on 127.0.0.1 (no mDNS, DHT server mode) with its own temporary profile directory.
pub struct TestNode {
    /// The node.
    pub node: Node,
    /// Its profile directory (kept alive as long as the node).
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// Creates an identity and starts a node bootstrapping from `bootstrap`.
    pub async fn start(bootstrap: Vec<Multiaddr>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let node = Node::create(Self::config(dir.path(), bootstrap)).await?;
        Ok(Self { node, dir })
    }

    /// The settings used for test nodes.
    pub fn config(dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
        let mut config = NodeConfig::loopback(dir);
        config.bootstrap = bootstrap;
        config.dht_server = true;
        config
    }

    /// Stops the node and starts it again from its directory, bootstrapping from `bootstrap`.
    pub async fn restart(&mut self, bootstrap: Vec<Multiaddr>) -> anyhow::Result<()> {
        self.node.shutdown().await?;
        self.node = Node::start(Self::config(self.dir.path(), bootstrap)).await?;
        Ok(())
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collects every engine event a node emits, in a background task.
pub struct EventLog {
    events: Arc<Mutex<Vec<Event>>>,
    lagged: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    /// Starts recording `node`'s events (from now on).
    pub fn record(node: &Node) -> Self {
        let mut rx = node.subscribe();
        let events = Arc::new(Mutex::new(Vec::new()));
        let lagged = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (sink, lost) = (events.clone(), lagged.clone());
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(NodeEvent::Engine(e)) => sink.lock().map(|mut v| v.push(e)).unwrap_or(()),
                    Ok(NodeEvent::Lagged { missed, .. }) => {
                        lost.fetch_add(missed, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Self { events, lagged, task }
    }

    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Events lost because the log fell behind (a test should see 0).
    pub fn lagged(&self) -> u64 {
        self.lagged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The new messages received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(*m),
                _ => None,
            })
            .collect()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lines a child process prints on its (piped) stdout, read by a background thread.
fn stdout_lines(
    child: &mut std::process::Child,
) -> anyhow::Result<std::sync::mpsc::Receiver<String>> {
    use std::io::BufRead;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading after the receiver is gone: a closed pipe would fail the child's next
        // write.
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

/// `alice` adds `bob`, sends him a first message (which sets the session up) and waits until
/// it is delivered; then `bob` stops. Returns Bob's user id, for what Alice sends next.
pub async fn meet_then_go_offline(
    alice: &Node,
    bob: Node,
) -> anyhow::Result<kith_node::kith_protocol::UserId> {
    use kith_node::kith_core::model::MessageStatus;
    alice.add_contact(&bob.contact_string(), "bob").await?;
    let first = alice.send_text(bob.user_id(), "hello").await?;
    let status =
        alice.wait_for_status(first, MessageStatus::Delivered, Duration::from_secs(60)).await?;
    anyhow::ensure!(status == MessageStatus::Delivered, "the first message ended {status:?}");
    // What else the first contact sends (Alice's profile) goes before Bob does: otherwise it
    // lands at his relays beside what the test sends, depending on timing.
    eventually(Duration::from_secs(60), "Alice's outbox to empty", || async {
        Ok((alice.outbox_len().await? == 0).then_some(()))
    })
    .await?;
    // Nor may a copy of the first message still be on its way to Bob's relays: under load
    // its direct request can time out after Bob stored it, and its relay deposit then lands
    // after the test counted what the relays hold.
    eventually(Duration::from_secs(60), "Alice's deliveries to settle", || async {
        Ok((alice.deliveries_in_flight().await? == 0).then_some(()))
    })
    .await?;
    // Bob accepts Alice: she gets his access key for his relays (sealed sender), and his
    // relays get its verifier, before he goes offline.
    bob.add_contact(&alice.contact_string(), "alice").await?;
    eventually(Duration::from_secs(60), "Bob's access key to reach Alice", || async {
        let contact = alice.contact(bob.user_id()).await?;
        Ok(contact.and_then(|c| c.access_key).map(|_| ()))
    })
    .await?;
    eventually(Duration::from_secs(60), "Bob's outbox to empty", || async {
        Ok((bob.outbox_len().await? == 0).then_some(()))
    })
    .await?;
    let user = bob.user_id();
    bob.shutdown().await?;
    Ok(user)
}

/// A `kith daemon` process, killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    /// Its profile directory.
    pub dir: PathBuf,
    /// The addresses it announced (with `/p2p/`).
    pub addresses: Vec<String>,
}

impl Daemon {
    /// Starts `kith --data-dir DIR daemon ARGS...`, optionally wrapped in `wrapper` (e.g.
    /// `ip netns exec NS`), and waits until its control socket is ready.
    pub fn spawn(dir: &std::path::Path, args: &[&str], wrapper: &[&str]) -> anyhow::Result<Self> {
        let mut command = wrapped_kith(wrapper)?;
        let mut child = command
            .arg("--data-dir")
            .arg(dir)
            .arg("daemon")
            .args(args)
            .env_remove("KITH_DATA_DIR")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let rx = stdout_lines(&mut child)?;
        let mut daemon = Self { child, dir: dir.to_owned(), addresses: Vec::new() };
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("control socket:") => return Ok(daemon),
                Ok(line) => {
                    if let Some(address) = line.strip_prefix("listening: ") {
                        daemon.addresses.push(address.to_owned());
                    }
                }
                Err(_) => anyhow::bail!("the daemon for {} did not start", dir.display()),
            }
        }
    }

    /// Runs `kith` against this daemon's profile.
    pub fn kith(&self, args: &[&str]) -> anyhow::Result<Output> {
        kith(&self.dir, args)
    }

    /// Runs a `kith ... --json` command against this daemon and parses what it printed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&kith_ok(&self.dir, args)?)?)
    }

    /// Whether the daemon lists a circuit address (it holds a relay reservation).
    pub fn holds_reservation(&self) -> anyhow::Result<bool> {
        let id = self.json(&["id", "--json"])?;
        Ok(id
            .get("addresses")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit"))))
    }

    /// The daemon's connections to `peer` (`kith peers --json` entries: `address`,
    /// `relayed`, `rtt_ms`).
    pub fn connections_to(&self, peer: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let all = self.json(&["peers", "--json"])?;
        let to_peer = |c: &&serde_json::Value| c.get("peer").and_then(|p| p.as_str()) == Some(peer);
        Ok(all.as_array().into_iter().flatten().filter(to_peer).cloned().collect())
    }

    /// Kills the process with SIGKILL (no flush, no goodbye) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process `signal` (`TERM`, `INT`, ...).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status =
            Command::new("kill").args([format!("-{signal}"), self.pid().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// The process's exit status if it ends within `wait`.
    pub fn exit_within(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Ask politely (flush and remove the socket), then make sure.
        let _ = kith(&self.dir, &["stop"]);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `kith` binary as a command, run through `wrapper` if given (e.g. `ip netns exec NS`).
fn wrapped_kith(wrapper: &[&str]) -> anyhow::Result<Command> {
    let kith = kith_binary()?;
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&kith);
            c
        }
        None => Command::new(&kith),
    };
    test_env(&mut command);
    Ok(command)
}

/// Helpers for the tests that build network namespaces (as root, with iproute2 and, for NAT,
/// iptables).
pub mod netns {
    use std::process::Command;

    /// Runs `program args...`, failing with its stderr.
    pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(program).args(args).output()?;
        if !out.status.success() {
            anyhow::bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Runs `ip args...`.
    pub fn ip(args: &[&str]) -> anyhow::Result<()> {
        run("ip", args)
    }

    /// The relay's address on the internet bridge.
    pub const RELAY_IP: &str = "172.31.0.1";

    /// One home: a router namespace with a WAN address on the bridge and a LAN, and a host
    /// namespace behind it.
    pub struct Home {
        /// The host's namespace.
        pub host: String,
        /// The host's address on its LAN.
        pub lan_ip: String,
    }

    /// The namespaces, removed on drop.
    pub struct Internet {
        prefix: String,
        namespaces: Vec<String>,
    }

    impl Internet {
        /// The full name of namespace `name`.
        pub fn ns(&self, name: &str) -> String {
            format!("{}{name}", self.prefix)
        }

        /// A new namespace `name` with its loopback up.
        pub fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
            let ns = self.ns(name);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            Ok(ns)
        }

        /// A namespace on the bridge at `172.31.0.<n>`.
        pub fn on_bridge(&mut self, name: &str, n: u8) -> anyhow::Result<String> {
            let ns = self.add_ns(name)?;
            let hub = self.ns("hub");
            let outer = format!("w{name}");
            ip(&[
                "-n", &ns, "link", "add", "wan", "type", "veth", "peer", "name", &outer, "netns",
                &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &outer, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("172.31.0.{n}/24"), "dev", "wan"])?;
            ip(&["-n", &ns, "link", "set", "wan", "up"])?;
            Ok(ns)
        }

        /// A home `name` behind router `172.31.0.<n>`, LAN `10.<n>.0.0/24`; `symmetric` picks a
        /// random source port for every mapping.
        pub fn home(&mut self, name: &str, n: u8, symmetric: bool) -> anyhow::Result<Home> {
            let router = self.on_bridge(&format!("r{name}"), n)?;
            let host = self.add_ns(name)?;
            ip(&[
                "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", &host,
            ])?;
            ip(&["-n", &router, "addr", "add", &format!("10.{n}.0.1/24"), "dev", "lan"])?;
            ip(&["-n", &router, "link", "set", "lan", "up"])?;
            let lan_ip = format!("10.{n}.0.2");
            ip(&["-n", &host, "addr", "add", &format!("{lan_ip}/24"), "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "route", "add", "default", "via", &format!("10.{n}.0.1")])?;
            run("ip", &["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let mut nat = vec![
                "netns",
                "exec",
                &router,
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if symmetric {
                nat.push("--random-fully");
            }
            run("ip", &nat)?;
            // Like a home router, drop (not refuse) what no one inside asked for: only replies,
            // to the router or through it, come in.
            for chain in ["INPUT", "FORWARD"] {
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &router,
                        "iptables",
                        "-A",
                        chain,
                        "-i",
                        "wan",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW,INVALID",
                        "-j",
                        "DROP",
                    ],
                )?;
            }
            Ok(Home { host, lan_ip })
        }

        /// The bridge, in its own namespace; namespaces named `k<pid>…`.
        pub fn create() -> anyhow::Result<Self> {
            let prefix = format!("k{}", std::process::id() % 100_000);
            let mut net = Self { prefix, namespaces: Vec::new() };
            let hub = net.add_ns("hub")?;
            ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", "br0", "up"])?;
            Ok(net)
        }
    }

    impl Drop for Internet {
        fn drop(&mut self) {
            for ns in self.namespaces.iter().rev() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }

    /// Why a namespace test cannot run here (not root, `ip` missing, or one of `tools`
    /// missing), or `None`.
    pub fn skip_reason(tools: &[&str]) -> Option<String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if uid.as_deref() != Some("0") {
            return Some("not running as root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Some("`ip` (iproute2) is not installed".into());
        }
        tools
            .iter()
            .find(|tool| Command::new(tool).arg("-V").output().is_err())
            .map(|tool| format!("`{tool}` is not installed"))
    }
}

/// Runs `kith` and returns its stdout, failing with its stderr if it exits non-zero.
pub fn kith_ok(data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = kith(data_dir, args)?;
    if !out.status.success() {
        anyhow::bail!("kith {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A `kith relay` process on 127.0.0.1, killed (SIGKILL) when dropped.
pub struct RelayProcess {
    child: std::process::Child,
    /// Its data directory.
    pub dir: PathBuf,
    /// The address it announced (with `/p2p/`).
    pub address: Multiaddr,
    /// What it logged on stderr.
    log: Arc<Mutex<Vec<String>>>,
}

impl RelayProcess {
    /// Starts `kith --data-dir DIR relay --listen /ip4/127.0.0.1/tcp/PORT ARGS...` and waits
    /// until it announces its address.
    pub fn spawn(dir: &std::path::Path, port: u16, args: &[&str]) -> anyhow::Result<Self> {
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        Self::spawn_in(dir, &["--listen", &listen], args, &[])
    }

    /// Starts `kith --data-dir DIR relay LISTEN... ARGS...`, wrapped in `wrapper` (e.g.
    /// `ip netns exec NS`), and waits until it announces a TCP address.
    #[allow(clippy::print_stderr, reason = "the relay's log goes into the test's output")]
    pub fn spawn_in(
        dir: &std::path::Path,
        listen: &[&str],
        args: &[&str],
        wrapper: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = wrapped_kith(wrapper)?;
        let mut child = command
            .arg("--data-dir")
            .arg(dir)
            .arg("relay")
            .args(listen)
            .args(args)
            .env_remove("KITH_DATA_DIR")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let rx = stdout_lines(&mut child)?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    // Shown with the test's output if it fails.
                    eprintln!("relay: {line}");
                    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
                }
            });
        }
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(address) = line.strip_prefix("listening: ")
                        && address.contains("/tcp/")
                    {
                        let address = address.parse()?;
                        return Ok(Self { child, dir: dir.to_owned(), address, log });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    anyhow::bail!("the relay in {} did not start", dir.display())
                }
            }
        }
    }

    /// Kills the process with SIGKILL (no flush, no goodbye) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The lines it logged on stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A relay node on 127.0.0.1 with its own temporary data directory.
pub struct TestRelay {
    /// The node.
    pub node: Node,
    /// Its data directory (kept alive as long as the node).
    pub dir: tempfile::TempDir,
}

impl TestRelay {
    /// Starts a relay with these operator settings.
    pub async fn start(settings: kith_node::relay::RelayConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = NodeConfig::loopback_relay(dir.path());
        config.relay_service = Some(settings);
        let node = Node::start_or_create(config).await?;
        Ok(Self { node, dir })
    }

    /// Its first listen address (with `/p2p/`).
    pub async fn address(&self) -> anyhow::Result<Multiaddr> {
        self.node.addresses().await?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no address"))
    }

    /// What it holds.
    pub async fn usage(&self) -> anyhow::Result<kith_node::RelayUsage> {
        self.node.relay_usage().await?.ok_or_else(|| anyhow::anyhow!("not a relay"))
    }
}

/// Creates (or restarts) a user node in `dir` whose home relays are `relays`.
pub async fn user_with_relays(
    dir: &std::path::Path,
    relays: Vec<Multiaddr>,
    create: bool,
) -> anyhow::Result<Node> {
    let mut config = TestNode::config(dir, vec![]);
    config.relays = relays;
    Ok(if create { Node::create(config).await? } else { Node::start(config).await? })
}

/// Files under `dir`, recursively, in path order (none if it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { dirs.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

/// Whether any file under `dir` contains `needle`.
pub fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    files_under(dir).iter().any(|path| {
        std::fs::read(path).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle))
    })
}

/// A file of `len` random bytes in `dir`, written 1 MiB at a time.
pub fn random_file(dir: &std::path::Path, name: &str, len: usize) -> anyhow::Result<PathBuf> {
    use rand::Rng;
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        let part = block.get_mut(..n).unwrap_or_default();
        rand::rng().fill_bytes(part);
        file.write_all(part)?;
        left -= n;
    }
    Ok(path)
}

/// BLAKE3 of a file, read 1 MiB at a time (no mapping: memory stays flat).
pub fn blake3_file(path: &std::path::Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}
