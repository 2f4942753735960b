//! `kith`: the command-line messenger. Thin by design: it parses arguments, renders results,
//! and calls a Kith node (the running daemon, or one it starts for the command).

// The CLI reads API results as `serde_json::Value`; indexing a `Value` by key never panics (a
// missing key reads as `Null`), and nothing in this crate writes through an index.
#![allow(clippy::indexing_slicing)]

/// Prints a line of output for a person, with everything a peer could have put in it (message
/// text, names, file names, group names) made safe for the terminal first: no escape
/// sequences, control or hidden formatting characters reach it raw. JSON output, which
/// escapes them itself, is printed as is.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // A closed stdout (a pipe whose reader left) must not kill a daemon or a relay.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            kith_node::kith_core::text::for_terminal(&format!($($arg)*))
        );
    }};
}

mod chat;
mod config;
mod conn;
mod demo;
mod group;
mod media;
mod notify;
mod relay;
mod render;
mod unlock;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use conn::{Conn, NetArgs};
use kith_node::kith_core::engine::{Command as EngineCommand, Config};
use kith_node::kith_core::identity::ContactString;
use kith_node::{Node, Profile, rpc};
use serde_json::{Value, json};

/// Kith: peer-to-peer, end-to-end encrypted messaging.
#[derive(Parser, Debug)]
#[command(name = "kith", version, about, long_about = None)]
struct Cli {
    /// Profile directory (identity, keys, messages). Default: $XDG_DATA_HOME/kith.
    #[arg(long, global = true, env = "KITH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// More log output on stderr: -v info, -vv debug, -vvv trace (`KITH_LOG`, a tracing
    /// filter such as `kith_node=debug`, takes precedence).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Errors only on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Keep the profile's key without a passphrase (a relay, a headless node whose disk is
    /// protected otherwise): for `init`, `relay`, `passphrase change`, and the one-time
    /// encryption of a profile from before encryption at rest. Otherwise Kith asks for a
    /// passphrase, or reads it from the file named by KITH_PASSPHRASE_FILE.
    #[arg(long, global = true, env = "KITH_NO_PASSPHRASE")]
    no_passphrase: bool,

    /// Keep the profile's key in the operating system's keyring (the Secret Service: GNOME
    /// Keyring, KWallet) instead of under a passphrase: for `init`, `passphrase change`, a
    /// restored backup, and the one-time encryption of a profile from before encryption at
    /// rest. The profile then opens while your keyring is unlocked, without a passphrase.
    #[arg(long, global = true, env = "KITH_KEYRING", conflicts_with = "no_passphrase")]
    keyring: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Write a backup: identity, contacts and their verification marks, groups, history and
    /// attachment records (not the downloads, not the sessions), encrypted under a new
    /// 30-digit recovery code shown once (or under the passphrase in --passphrase-file).
    Create {
        /// Where to write it.
        file: PathBuf,
        /// Encrypt it under the passphrase in this file instead of a recovery code.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into this (fresh) profile directory: the same identity, contacts,
    /// groups and history. Sessions start anew: contacts see a session reset, not a new key.
    /// The recovery code is read from standard input when that is not a terminal; the new
    /// profile's passphrase as for `kith init`.
    Restore {
        /// The backup.
        file: PathBuf,
        /// The backup was made with --passphrase-file: read that passphrase from this file.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum PassphraseCommand {
    /// Change it (or, with --no-passphrase, remove it): the key is wrapped anew, the data is
    /// not rewritten, and a crash leaves a profile that opens with the old or the new one.
    /// The current one is read as for any command (KITH_PASSPHRASE_FILE, else the terminal).
    Change {
        /// Read the new passphrase from this file instead of the terminal (scripts).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new identity in the profile directory.
    Init {
        /// Your display name, shared with the contacts you add.
        #[arg(long)]
        name: Option<String>,
    },
    /// The passphrase that protects the profile's key (and so its database) at rest.
    #[command(subcommand)]
    Passphrase(PassphraseCommand),
    /// Encrypted backups of the profile, and restoring one on another machine.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Print your contact string (and, while the daemon runs, its addresses).
    Id {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also print the contact string as a QR code.
        #[arg(long)]
        qr: bool,
    },
    /// Manage contacts.
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Groups: create, add, remove, leave, list, info, send.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Run the node in the foreground, with the control socket (JSON-RPC) in the profile.
    Daemon {
        /// Raise a desktop notification for each new message (sender and first line), where a
        /// notification service runs.
        #[arg(long)]
        notify: bool,
        /// Run this shell command for each new message, with the message as one JSON object
        /// on its standard input (see the README); one at a time, each for at most 30 s.
        #[arg(long, value_name = "CMD")]
        on_message: Option<String>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Run a relay: a headless node that holds encrypted messages for offline users and
    /// serves their prekeys (it never sees plaintext).
    Relay(relay::RelayArgs),
    /// Delete messages on this device only (your contacts keep theirs): the ids given (from
    /// `kith history --json`), or with --all the whole conversation. A message not yet sent is
    /// not sent. The contact or group stays (`kith contact remove` removes a contact).
    Forget {
        /// Contact name or peer id, or a group (name or id).
        conversation: String,
        /// The messages' ids.
        ids: Vec<String>,
        /// The whole conversation.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Show or set a conversation's disappearing messages: with a timer (`1w`, `1d`, `8h`,
    /// `30m`, `45s`, at most a year), each message from then on disappears from every device
    /// in the conversation that long after it was read (after it was sent, on the sender's),
    /// attachments and downloads included; `off` stops it. Everyone in the conversation sees
    /// who set it.
    Disappear {
        /// Contact name or peer id, or a group (name or id).
        conversation: String,
        /// The timer, or `off`; without it, shows the current one.
        #[arg(value_parser = render::parse_timer)]
        timer: Option<u32>,
    },
    /// Stop the running daemon.
    Stop,
    /// List the running daemon's connections: to whom, at which address, and whether direct
    /// or through a relay.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a text message.
    Send {
        /// Contact name or peer id.
        to: String,
        /// The text (UTF-8, at most 64 KiB); `-` reads it from standard input.
        text: String,
        /// Wait until the message is sent (held by the peer or a relay), delivered or read.
        #[arg(long, value_enum)]
        wait: Option<Wait>,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Network options when no daemon runs.
        #[command(flatten)]
        net: NetArgs,
    },
    /// Send a file (photo, video, document) as an end-to-end encrypted attachment, with a
    /// progress bar until the recipient (or, while they are offline, their relay) has it all.
    SendFile {
        /// Contact name or peer id, or a group (name or id): its members fetch it from you.
        to: String,
        /// The file.
        path: PathBuf,
        /// A caption shown with it.
        #[arg(long)]
        caption: Option<String>,
        /// Return once the file is queued (the daemon keeps serving it).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the transfer, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Network options when no daemon runs.
        #[command(flatten)]
        net: NetArgs,
    },
    /// Show the conversation with a contact or in a group.
    History {
        /// Contact name or peer id, or group name or id.
        peer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Chat with a contact or in a group, in a terminal UI.
    Chat {
        /// The conversation to open first: contact name or peer id, or group name or id
        /// (default: the most recent).
        peer: Option<String>,
        /// Network options when no daemon runs.
        #[command(flatten)]
        net: NetArgs,
    },
    /// Watch two people find each other and chat, on this machine, narrated.
    Demo,
    /// Print a shell completion script (e.g. `kith completions bash > ~/.local/share/bash-completion/completions/kith`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `kith man | man -l -`; with `--dir`, write it and
    /// one page per command (kith-send.1, kith-contact-add.1, ...) there.
    Man {
        /// Where to write every page.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ContactCommand {
    /// Add (or rename) a contact from their contact string (kith:<peer-id>...).
    Add {
        /// The contact string.
        contact: String,
        /// The name to know them by.
        #[arg(long)]
        name: String,
    },
    /// List contacts (and, apart, message requests).
    List {
        /// Also list the members of your groups you have not added yourself.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List message requests: strangers who wrote to you, with their latest message.
    /// Answer with `contact accept`, `contact block` or `contact remove`.
    Requests {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept a message request (or anyone's peer id) as a contact under a name.
    Accept {
        /// Their peer id (as `contact requests` shows it).
        peer: String,
        /// The name to know them by.
        #[arg(long)]
        name: String,
    },
    /// Give a contact another name.
    Rename {
        /// Contact name or peer id.
        name: String,
        /// The new name.
        new_name: String,
    },
    /// Remove a contact and the sessions with them (your history with them stays); a
    /// stranger's message request is deleted this way.
    Remove {
        /// Contact name or peer id.
        name: String,
    },
    /// Block a contact or a stranger: their messages are refused and the groups they invited
    /// you to are declined.
    Block {
        /// Contact name or peer id.
        name: String,
    },
    /// Unblock a contact.
    Unblock {
        /// Contact name or peer id.
        name: String,
    },
    /// Show the safety number with a contact and mark them verified once it matches.
    Verify {
        /// Contact name or peer id.
        name: String,
        /// Mark verified without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Accept a contact's changed identity key.
    Trust {
        /// Contact name or peer id.
        name: String,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Wait {
    Sent,
    Delivered,
    Read,
}

impl Wait {
    fn word(self) -> &'static str {
        match self {
            Wait::Sent => "sent",
            Wait::Delivered => "delivered",
            Wait::Read => "read",
        }
    }
}

/// Writes `name`.1 for `command` and one page per subcommand, recursively, into `dir`;
/// returns how many.
fn write_man_pages(
    command: &clap::Command,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<usize> {
    let page = command.clone().name(name.to_owned());
    let path = dir.join(format!("{name}.1"));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    clap_mangen::Man::new(page).render(&mut file)?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
        written += write_man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}

fn data_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(dir) => Ok(dir),
        None => Ok(dirs::data_dir()
            .context("no data directory known for this system; pass --data-dir")?
            .join("kith")),
    }
}

fn qr(text: &str) -> anyhow::Result<String> {
    let code =
        qrcode::QrCode::new(text.as_bytes()).context("contact string too long for a QR code")?;
    Ok(code.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let mut stdout = std::io::stdout();
    write!(stdout, "{question} [y/N] ")?;
    stdout.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn contact_label(c: &Value) -> String {
    let name = match (c["name"].as_str(), c["profile_name"].as_str()) {
        (Some(ours), _) => ours.to_owned(),
        (None, Some(theirs)) => format!("~{theirs}"),
        (None, None) => "(unnamed)".to_owned(),
    };
    let mut flags = Vec::new();
    if c["verified"].as_bool() == Some(true) {
        flags.push("verified");
    }
    if c["identity_changed"].as_bool() == Some(true) {
        flags.push("IDENTITY CHANGED");
    }
    if c["blocked"].as_bool() == Some(true) {
        flags.push("blocked");
    }
    if let Some(p) = c["presence"].as_str() {
        flags.push(p);
    }
    let flags = if flags.is_empty() { String::new() } else { format!("  ({})", flags.join(", ")) };
    format!("{name}  kith:{}{flags}", c["peer_id"].as_str().unwrap_or(""))
}

#[allow(clippy::print_stdout, reason = "printing is this binary's job")]
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = data_dir(cli.data_dir)?;
    unlock::set_no_passphrase(cli.no_passphrase);
    unlock::set_keyring(cli.keyring);
    match cli.command {
        Command::Backup(BackupCommand::Create { file, passphrase_file, json }) => {
            let path = std::path::absolute(&file)
                .with_context(|| format!("{}: not a usable path", file.display()))?;
            let mut params = json!({ "path": path.to_string_lossy() });
            if let Some(passphrase_file) = passphrase_file {
                let passphrase = unlock::read_passphrase_file(&passphrase_file)?;
                params["passphrase"] = json!(passphrase.as_str());
            }
            let mut conn = Conn::open(&dir, None).await?;
            let made = conn.call("backup.create", params).await?;
            conn.close().await?;
            if json {
                println!("{made}");
            } else {
                say!(
                    "Wrote a backup of {} contacts and {} messages to {}.",
                    made["contacts"],
                    made["messages"],
                    path.display()
                );
                if let Some(code) = made["code"].as_str() {
                    say!("Recovery code (shown only now; write it down, it opens the backup):");
                    say!("    {code}");
                }
            }
        }
        Command::Disappear { conversation, timer } => {
            let mut conn = Conn::open(&dir, None).await?;
            let with_timer = |mut params: Value| {
                if let Some(seconds) = timer {
                    params["seconds"] = json!(seconds);
                }
                params
            };
            let mut result =
                conn.call("disappear", with_timer(json!({ "peer": conversation }))).await;
            // Not a contact: perhaps a group (as for `kith history`).
            if result.as_ref().is_err_and(|e| e.to_string().contains("no contact named")) {
                let group =
                    conn.call("disappear", with_timer(json!({ "group": conversation }))).await;
                if !group.as_ref().is_err_and(|e| e.to_string().contains("no group named")) {
                    result = group;
                }
            }
            conn.close().await?;
            let seconds = result?.get("seconds").and_then(Value::as_u64).unwrap_or(0);
            match (timer, seconds) {
                (None, 0) => say!("Disappearing messages are off with {conversation}."),
                (None, s) => say!(
                    "Messages with {conversation} disappear {} after they are read.",
                    render::timer_words(s)
                ),
                (Some(_), 0) => say!("Disappearing messages are now off with {conversation}."),
                (Some(_), s) => say!(
                    "Messages with {conversation} now disappear {} after they are read.",
                    render::timer_words(s)
                ),
            }
        }
        Command::Forget { conversation, ids, all } => {
            if ids.is_empty() && !all {
                anyhow::bail!(
                    "give the ids of the messages to delete, or --all for the whole conversation"
                );
            }
            let mut conn = Conn::open(&dir, None).await?;
            let with_ids = |mut params: Value| {
                if !all {
                    params["ids"] = json!(ids);
                }
                params
            };
            let mut result = conn.call("forget", with_ids(json!({ "peer": conversation }))).await;
            // Not a contact: perhaps a group (as for `kith history`).
            if result.as_ref().is_err_and(|e| e.to_string().contains("no contact named")) {
                let group = conn.call("forget", with_ids(json!({ "group": conversation }))).await;
                if !group.as_ref().is_err_and(|e| e.to_string().contains("no group named")) {
                    result = group;
                }
            }
            conn.close().await?;
            result?;
            if all {
                say!("Deleted the conversation with {conversation} on this device.");
            } else {
                say!("Deleted {} message(s) on this device.", ids.len());
            }
        }
        Command::Backup(BackupCommand::Restore { file, passphrase_file }) => {
            restore(&dir, &file, passphrase_file.as_deref())?;
        }
        Command::Passphrase(PassphraseCommand::Change { new_passphrase_file }) => {
            if !Profile::key_path(&dir).exists() {
                anyhow::bail!(
                    "no encrypted profile in {} (a profile from before encryption is encrypted \
                     the first time it is opened)",
                    dir.display()
                );
            }
            let old = unlock::current(&dir)?;
            let new = unlock::new_for_change(new_passphrase_file.as_deref())?;
            Profile::change_protection(&dir, &old, &new)?;
            match new {
                kith_node::KeyProtection::NoPassphrase => say!(
                    "The profile's key is now kept without a passphrase (readable by you only)."
                ),
                kith_node::KeyProtection::Keyring => say!(
                    "The profile's key is now kept in your keyring: it opens while the keyring \
                     is unlocked."
                ),
                _ => say!("Passphrase changed."),
            }
        }
        Command::Init { name } => {
            let mut profile = Profile::create(&dir, Config::default(), &unlock::for_create()?)?;
            if let Some(name) = name {
                let now = kith_node::now_millis();
                profile
                    .engine_mut()
                    .handle_command(now, EngineCommand::SetProfile { display_name: name })?;
                profile.engine_mut().flush()?;
            }
            say!("Created a new identity in {}", dir.display());
            say!(
                "Your contact string: {}",
                ContactString::new(profile.engine().user_id(), Vec::new())
            );
        }
        Command::Id { json, qr: show_qr } => {
            let mut conn = Conn::open(&dir, None).await?;
            let id = conn.call("id", Value::Null).await?;
            conn.close().await?;
            let contact = id["contact"].as_str().unwrap_or_default().to_owned();
            if json {
                println!("{id}");
            } else {
                println!("{contact}");
                for address in id["addresses"].as_array().into_iter().flatten() {
                    say!("listening: {}", address.as_str().unwrap_or_default());
                }
            }
            if show_qr {
                say!("{}", qr(&contact)?);
            }
        }
        Command::Group(command) => {
            let net = command.net().cloned();
            let mut conn = Conn::open(&dir, net.as_ref()).await?;
            let result = group::run(&mut conn, command).await;
            conn.close().await?;
            result?;
        }
        Command::Contact(command) => {
            let mut conn = Conn::open(&dir, None).await?;
            let result = contact(&mut conn, command).await;
            conn.close().await?;
            result?;
        }
        Command::Daemon { notify, on_message, net } => {
            let notify = notify::Notify { desktop: notify, command: on_message };
            daemon(&dir, &net, notify).await?;
        }
        Command::Relay(args) => relay::run(&dir, &args).await?,
        Command::Stop => {
            let mut client = rpc::RpcClient::connect(&dir)
                .await
                .with_context(|| format!("no daemon is running for {}", dir.display()))?;
            client.call("shutdown", Value::Null).await.map_err(|e| anyhow::anyhow!(e.message))?;
            // The daemon closes our connection when its process ends, after its last flush.
            if tokio::time::timeout(STOP_WAIT, client.closed()).await.is_err() {
                anyhow::bail!(
                    "the daemon was asked to stop but is still running after {} s",
                    STOP_WAIT.as_secs()
                );
            }
            say!("daemon stopped");
        }
        Command::Peers { json } => {
            let mut client = rpc::RpcClient::connect(&dir)
                .await
                .with_context(|| format!("no daemon is running for {}", dir.display()))?;
            let connections = client
                .call("connections", Value::Null)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            if json {
                say!("{connections}");
            } else {
                for c in connections.as_array().into_iter().flatten() {
                    let how =
                        if c["relayed"].as_bool() == Some(true) { "relayed" } else { "direct" };
                    let rtt =
                        c["rtt_ms"].as_f64().map(|ms| format!(" {ms:.1} ms")).unwrap_or_default();
                    say!(
                        "{} {how}{rtt} {}",
                        c["peer"].as_str().unwrap_or_default(),
                        c["address"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        Command::Send { to, text, wait, timeout, json, net } => {
            let text = if text == "-" { read_text(std::io::stdin().lock())? } else { text };
            let mut conn = Conn::open(&dir, Some(&net)).await?;
            // A node started just for this command stays up until the message left it.
            let wait = wait.map(Wait::word).or((!conn.is_daemon()).then_some("sent"));
            // A null `wait` means "do not wait".
            let params =
                json!({ "to": to, "text": text, "timeout_ms": timeout * 1000, "wait": wait });
            let result = conn.call("send", params).await;
            let local = !conn.is_daemon();
            conn.close().await?;
            let result = result?;
            let timed_out = result["timed_out"] == true;
            if json {
                println!("{result}");
            } else {
                let status = result["status"].as_str().unwrap_or_default();
                let failure =
                    result["failure"].as_str().map(|f| format!(": {f}")).unwrap_or_default();
                let why = result["why"].as_str().map(|w| format!(" ({w})")).unwrap_or_default();
                say!("{} {status}{failure}{why}", result["id"].as_str().unwrap_or_default());
                if timed_out && local && status == "queued" {
                    say!(
                        "not sent yet: the message is queued and goes out the next time a node runs (`kith daemon`)"
                    );
                }
            }
            if result["status"] == "failed" {
                return Ok(ExitCode::FAILURE);
            }
            if timed_out {
                // 3: the message is kept and may still go; it did not reach what was waited for.
                return Ok(ExitCode::from(3));
            }
        }
        Command::SendFile { to, path, caption, no_wait, timeout, json, net } => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut conn = Conn::open(&dir, Some(&net)).await?;
            let result = media::send_file(&mut conn, &to, &path, caption, no_wait, timeout).await;
            let local = !conn.is_daemon();
            conn.close().await?;
            let (sent, outcome) = result?;
            if json {
                println!("{}", json!({ "sent": sent, "outcome": outcome.word() }));
            } else {
                say!(
                    "{} {}",
                    sent["id"].as_str().unwrap_or_default(),
                    outcome.describe(&to, local, sent["group"] == true)
                );
            }
            if outcome == media::Outcome::TimedOut && local {
                return Ok(ExitCode::from(3));
            }
        }
        Command::History { peer, json, limit } => {
            let mut conn = Conn::open(&dir, None).await?;
            let mut history = conn.call("history", json!({ "peer": peer, "limit": limit })).await;
            // Not a contact: perhaps a group. If it is neither, the contact error stands.
            if history.as_ref().is_err_and(|e| e.to_string().contains("no contact named")) {
                let group = conn.call("history", json!({ "group": peer, "limit": limit })).await;
                if !group.as_ref().is_err_and(|e| e.to_string().contains("no group named")) {
                    history = group;
                }
            }
            let contacts =
                if json { Value::Null } else { conn.call("contact.list", Value::Null).await? };
            conn.close().await?;
            let history = history?;
            if json {
                println!("{history}");
            } else {
                let names = render::names(&contacts);
                for m in history.as_array().into_iter().flatten() {
                    say!("{}", render::message_line(m, &peer, &names));
                }
            }
        }
        Command::Chat { peer, net } => chat::run(&dir, &net, peer.as_deref()).await?,
        Command::Demo => demo::run().await?,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "kith", &mut std::io::stdout());
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            std::io::stdout().write_all(&page)?;
        }
        Command::Man { dir: Some(dir) } => {
            let command = <Cli as clap::CommandFactory>::command();
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let written = write_man_pages(&command, "kith", &dir)?;
            say!("wrote {written} manual pages to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "printing is this binary's job; warnings go to stderr"
)]
async fn contact(conn: &mut Conn, command: ContactCommand) -> anyhow::Result<()> {
    match command {
        ContactCommand::Add { contact, name } => {
            // A bare peer id is a contact string without its scheme.
            let contact = if contact.trim().starts_with("kith:") {
                contact
            } else {
                format!("kith:{}", contact.trim())
            };
            // Check the string here too, for a precise error before anything is touched.
            let parsed = contact
                .parse::<ContactString>()
                .with_context(|| format!("malformed contact string or peer id `{contact}`"))?;
            let peer = kith_node::kith_core::identity::peer_id_of(&parsed.user)
                .map(|p| p.to_string())
                .with_context(|| format!("`{contact}` is not a valid peer id"))?;
            let contacts = conn.call("contact.list", Value::Null).await?;
            let known = contacts
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["peer_id"] == peer.as_str())
                .and_then(|c| c["name"].as_str().map(str::to_owned));
            conn.call("contact.add", json!({ "contact": contact, "name": name })).await?;
            match &known {
                Some(old) if old == name.trim() => say!("{old} is already a contact"),
                Some(old) => say!("renamed {old} to {}", name.trim()),
                None => say!("added {}", name.trim()),
            }
            // A peer id is a key and carries no checksum: one with a typo is a valid id of
            // nobody. Look for its owner, and say so when nobody answers to it.
            if known.is_none() && conn.is_daemon() {
                let found = conn.call("contact.find", json!({ "contact": contact })).await?;
                if found["found"] == false {
                    eprintln!(
                        "warning: nobody with peer id {peer} is in the network now (not connected, no record in the DHT). Check it for typos; if it is right, messages to {} wait until they come online",
                        name.trim()
                    );
                }
            }
        }
        ContactCommand::List { all, json } => {
            let contacts = conn.call("contact.list", Value::Null).await?;
            if json {
                println!("{contacts}");
                return Ok(());
            }
            let contacts = contacts.as_array().cloned().unwrap_or_default();
            let (requests, others): (Vec<&Value>, Vec<&Value>) =
                contacts.iter().partition(|c| c["request"] == true);
            for c in others.iter().filter(|c| all || c["name"].is_string() || c["blocked"] == true)
            {
                say!("{}", contact_label(c));
            }
            if !requests.is_empty() {
                say!("{} message request(s): see `kith contact requests`", requests.len());
            }
        }
        ContactCommand::Requests { json } => {
            let contacts = conn.call("contact.list", Value::Null).await?;
            let requests: Vec<&Value> = contacts
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["request"] == true)
                .collect();
            let mut listed = Vec::new();
            for c in requests {
                let peer = c["peer_id"].as_str().unwrap_or_default();
                let last = conn.call("history", json!({ "peer": peer, "limit": 1 })).await?;
                let last = last.as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
                listed.push((c, last));
            }
            if json {
                let all: Vec<Value> = listed
                    .iter()
                    .map(|(c, last)| json!({ "contact": c, "last_message": last }))
                    .collect();
                println!("{}", Value::Array(all));
            } else if listed.is_empty() {
                say!("no message requests");
            } else {
                for (c, last) in listed {
                    let peer = c["peer_id"].as_str().unwrap_or_default();
                    let who =
                        c["profile_name"].as_str().map(|n| format!("~{n}")).unwrap_or_default();
                    say!("{who}  kith:{peer}");
                    if !last.is_null() {
                        say!("    {}", render::message_line(&last, "them", &render::Names::new()));
                    }
                }
                say!(
                    "accept: kith contact accept <PEER> --name NAME · block: kith contact block <PEER> · delete: kith contact remove <PEER>"
                );
            }
        }
        ContactCommand::Accept { peer, name } => {
            let bare = peer.trim().trim_start_matches("kith:").to_owned();
            if bare.parse::<libp2p::PeerId>().is_err() {
                anyhow::bail!("`{peer}` is not a peer id (contact requests lists them)");
            }
            conn.call("contact.add", json!({ "contact": format!("kith:{bare}"), "name": name }))
                .await?;
            say!("{} is now a contact", name.trim());
        }
        ContactCommand::Rename { name, new_name } => {
            conn.call("contact.rename", json!({ "contact": name, "name": new_name })).await?;
            say!("renamed {name} to {}", new_name.trim());
        }
        ContactCommand::Remove { name } => {
            conn.call("contact.remove", json!({ "contact": name })).await?;
            say!("removed {name}");
        }
        ContactCommand::Block { name } => {
            conn.call("contact.block", json!({ "contact": name, "blocked": true })).await?;
            say!("blocked {name}: their messages are refused");
        }
        ContactCommand::Unblock { name } => {
            conn.call("contact.block", json!({ "contact": name, "blocked": false })).await?;
            say!("unblocked {name}");
        }
        ContactCommand::Verify { name, yes } => {
            let shown =
                conn.call("contact.verify", json!({ "contact": name, "mark": false })).await?;
            say!(
                "Safety number with {name}:\n\n    {}\n",
                shown["safety_number"].as_str().unwrap_or_default()
            );
            say!("Compare it with the one on {name}'s device (in person or on a call).");
            if yes || confirm("Do the numbers match?")? {
                conn.call("contact.verify", json!({ "contact": name, "mark": true })).await?;
                say!("{name} is now verified.");
            } else {
                say!("Not marked as verified.");
            }
        }
        ContactCommand::Trust { name } => {
            let bare = name.trim().trim_start_matches("kith:");
            let contacts = conn.call("contact.list", Value::Null).await?;
            let Some(found) = contacts
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == name.trim() || c["peer_id"] == bare)
            else {
                anyhow::bail!("no contact named `{name}`");
            };
            if found["identity_changed"].as_bool() != Some(true) {
                say!("{name}'s identity key has not changed: nothing to accept");
                return Ok(());
            }
            conn.call("contact.trust", json!({ "contact": name })).await?;
            say!(
                "accepted {name}'s new identity key; verify the new safety number with `kith contact verify {name}`"
            );
        }
    }
    Ok(())
}

/// A message's text from `input` (standard input for `kith send NAME -`): UTF-8 up to
/// [`MAX_TEXT_BYTES`](kith_node::kith_protocol::limits::MAX_TEXT_BYTES), one trailing newline
/// dropped (what `echo` and here-documents add).
fn read_text(input: impl std::io::Read) -> anyhow::Result<String> {
    use std::io::Read;
    let max = kith_node::kith_protocol::limits::MAX_TEXT_BYTES;
    let mut bytes = Vec::new();
    input.take(max as u64 + 2).read_to_end(&mut bytes).context("reading the text")?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
    }
    anyhow::ensure!(bytes.len() <= max, "the text is longer than {} KiB (the limit)", max / 1024);
    anyhow::ensure!(!bytes.is_empty(), "no text on standard input");
    String::from_utf8(bytes).context("the text on standard input is not UTF-8")
}

/// `kith backup restore`: opens the backup with its recovery code (from standard input when
/// that is not a terminal) or passphrase file, then restores it into `dir`.
fn restore(
    dir: &std::path::Path,
    file: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use kith_node::kith_core::store::{BackupSecret, RecoveryCode, RestoredBackup};
    if Profile::db_path(dir).exists() {
        anyhow::bail!(
            "{} already holds a profile: restore into a fresh directory (--data-dir)",
            dir.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let backup = match passphrase_file {
        Some(path) => {
            let passphrase = unlock::read_passphrase_file(path)?;
            RestoredBackup::open(&bytes, &BackupSecret::Passphrase(passphrase.as_bytes()))?
        }
        None => {
            let line = if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Recovery code: ")
                    .context("reading the recovery code")?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the recovery code")?;
                line
            };
            let code = RecoveryCode::parse(&line)?;
            RestoredBackup::open(&bytes, &BackupSecret::Code(&code))?
        }
    };
    let summary = backup.summary();
    let profile = Profile::restore(dir, &backup, Config::default(), &unlock::for_create()?)?;
    say!(
        "Restored {} into {}: {} contacts, {} messages. Sessions start anew: your contacts see \
         a session reset, and the same identity.",
        ContactString::new(profile.engine().user_id(), Vec::new()),
        dir.display(),
        summary.contacts,
        summary.messages
    );
    Ok(())
}

/// How long `kith stop` waits for the daemon's process to end.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[allow(clippy::print_stdout, reason = "the daemon reports its addresses on stdout")]
async fn daemon(
    dir: &std::path::Path,
    net: &NetArgs,
    notify: notify::Notify,
) -> anyhow::Result<()> {
    if rpc::RpcClient::connect(dir).await.is_ok() {
        anyhow::bail!("a daemon is already running for {} (`kith stop` stops it)", dir.display());
    }
    let mut config = net.config(dir)?;
    config.protection = unlock::for_open(dir)?;
    let node = Node::start(config).await?;
    let mut stop = rpc::serve(node.clone(), dir).await.context("starting the control socket")?;
    // Received attachments download on their own; show them (bars only on a terminal).
    tokio::spawn(media::show_downloads(node.clone()));
    tokio::spawn(notify::run(node.clone(), notify));
    say!("kith daemon for {}", node.contact_string());
    for address in node.addresses().await? {
        say!("listening: {address}");
    }
    say!("control socket: {}", rpc::socket_path(dir).display());
    // SIGTERM (a service manager, `kill`) and SIGINT (Ctrl-C) stop it as `kith stop` does:
    // stores flushed, peers told, the socket removed, exit status 0.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stop.recv() => {}
    }
    node.shutdown().await?;
    let _ = std::fs::remove_file(rpc::socket_path(dir));
    Ok(())
}

/// Logs to stderr at the level `-v`/`-q` ask for (warnings by default, info for `service`:
/// `kith relay`), or as `KITH_LOG` says; colours only on a terminal (not in a file or a
/// service manager's journal).
fn init_logging(verbose: u8, quiet: bool, service: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        // A relay is a service: its operator wants to see connections, deposits, refusals.
        (false, 0) if service => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[allow(clippy::print_stderr, reason = "errors are reported on stderr")]
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet, matches!(cli.command, Command::Relay(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kith: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Whatever still runs on blocking threads (a download's writer between two chunks) is
    // not waited for: the node has flushed what it acknowledged before `run` returned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kith: {}", kith_node::kith_core::text::for_terminal(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
