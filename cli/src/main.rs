//! `kith`: the command-line messenger. Thin by design: it parses, renders, and calls
//! `kith-node`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kith_node::Profile;
use kith_node::kith_core::engine::{Command as EngineCommand, Config};
use kith_node::kith_core::identity::ContactString;

/// Kith: peer-to-peer, end-to-end encrypted messaging.
#[derive(Parser, Debug)]
#[command(name = "kith", version, about, long_about = None)]
struct Cli {
    /// Profile directory (identity, keys, messages). Defaults to `$XDG_DATA_HOME/kith`.
    #[arg(long, global = true, env = "KITH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates a new identity in the profile directory.
    Init {
        /// Your display name, shared with the contacts you add.
        #[arg(long)]
        name: Option<String>,
    },
    /// Prints your contact string (`kith:<peer-id>`) for others to add you.
    Id {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Also print the contact string as a QR code.
        #[arg(long)]
        qr: bool,
    },
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

#[allow(clippy::print_stdout, reason = "printing is this binary's job")]
fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = data_dir(cli.data_dir)?;
    match cli.command {
        Command::Init { name } => {
            let mut profile = Profile::create(&dir, Config::default())?;
            if let Some(name) = name {
                let now = kith_node::clock::now_millis();
                profile
                    .engine_mut()
                    .handle_command(now, EngineCommand::SetProfile { display_name: name })?;
                profile.engine_mut().flush()?;
            }
            let contact = ContactString::new(profile.engine().user_id(), Vec::new());
            println!("Created a new identity in {}", dir.display());
            println!("Your contact string: {contact}");
        }
        Command::Id { json, qr: show_qr } => {
            let profile = Profile::open(&dir, Config::default())?;
            let engine = profile.engine();
            let contact = ContactString::new(engine.user_id(), Vec::new()).to_string();
            if json {
                let value = serde_json::json!({
                    "peer_id": engine.identity().peer_id().to_string(),
                    "contact": contact,
                    "display_name": engine.store().profile_name()?,
                });
                println!("{value}");
            } else {
                println!("{contact}");
            }
            if show_qr {
                println!("{}", qr(&contact)?);
            }
        }
    }
    Ok(())
}

#[allow(clippy::print_stderr, reason = "errors are reported on stderr")]
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kith: {e:#}");
            ExitCode::FAILURE
        }
    }
}
