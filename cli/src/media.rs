//! Attachments in the CLI: `send-file` with a progress bar, and the daemon's download bars.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kith_node::NodeEvent;
use kith_node::media::{MediaEvent, TransferDirection};
use serde_json::{Value, json};

use crate::conn::Conn;

/// How a `send-file` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The recipient has every chunk.
    Delivered,
    /// A relay holds every chunk for the recipient.
    OnRelay,
    /// Queued; not waited for.
    Queued,
    /// The wait ended first.
    TimedOut,
}

impl Outcome {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::OnRelay => "on_relay",
            Self::Queued => "queued",
            Self::TimedOut => "timed_out",
        }
    }

    pub(crate) fn describe(self, to: &str, local: bool, group: bool) -> String {
        match self {
            Self::Delivered if group => {
                format!("every chunk went out to {to}'s members; the others fetch it from you")
            }
            Self::Delivered => format!("{to} has the whole file"),
            Self::OnRelay => format!("{to}'s relay holds the file until {to} fetches it"),
            Self::Queued => "queued; the daemon serves it".into(),
            Self::TimedOut if local => {
                "not sent yet: the file is queued and served the next time a node runs (`kith daemon`)"
                    .into()
            }
            Self::TimedOut => "still sending: the daemon keeps serving it".into(),
        }
    }
}

/// A bar showing bytes, rate and ETA.
fn bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// What a `send-file` follows of the daemon's events, for one attachment.
struct Follow {
    media: String,
    /// Whether the recipient itself is fetching: then a relay holding the file too is not
    /// where the transfer ends.
    direct: bool,
}

/// What an event means to a `send-file`.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Bytes done so far.
    Progress(u64),
    /// The transfer ended.
    Done(Outcome),
    /// It failed, for this reason.
    Failed(String),
    /// Not about it.
    Nothing,
}

impl Follow {
    fn step(&mut self, event: &Value) -> Step {
        if event["media"].as_str() != Some(self.media.as_str()) {
            return Step::Nothing;
        }
        match event["type"].as_str() {
            Some("media_progress") if event["direction"] == "sending" => {
                let relay = event["relay"].is_string();
                self.direct |= !relay;
                if !relay && event["chunks_done"] == event["chunks"] {
                    return Step::Done(Outcome::Delivered);
                }
                Step::Progress(event["bytes_done"].as_u64().unwrap_or(0))
            }
            Some("media_uploaded") if !self.direct => Step::Done(Outcome::OnRelay),
            Some("media_failed") => {
                Step::Failed(event["reason"].as_str().unwrap_or("the transfer failed").to_owned())
            }
            _ => Step::Nothing,
        }
    }
}

/// Sends `path` to `to`, then follows the transfer until the recipient or one of its relays has
/// every chunk (unless `no_wait`).
pub(crate) async fn send_file(
    conn: &mut Conn,
    to: &str,
    path: &Path,
    caption: Option<String>,
    no_wait: bool,
    timeout: u64,
) -> anyhow::Result<(Value, Outcome)> {
    // Subscribed first: the recipient may start pulling right away.
    let mut events = conn.events().await?;
    let params = json!({ "to": to, "path": path.display().to_string(), "caption": caption });
    let sent = match conn.call("send_file", params).await {
        // Not a contact: perhaps a group (its members fetch the file from us).
        Err(e) if e.to_string().contains("no contact named") => {
            let params =
                json!({ "group": to, "path": path.display().to_string(), "caption": caption });
            let mut sent = match conn.call("group.send_file", params).await {
                Err(g) if g.to_string().contains("no group named") => return Err(e),
                other => other?,
            };
            sent["group"] = json!(true);
            sent
        }
        other => other?,
    };
    if no_wait && conn.is_daemon() {
        return Ok((sent, Outcome::Queued));
    }
    let media = sent["media"].as_str().unwrap_or_default().to_owned();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let progress = bar(sent["size"].as_u64().unwrap_or(0), &format!("sending {name}"));
    // Redrawn on its own too, so rate and ETA move between chunks.
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut follow = Follow { media, direct: false };
    let wait = async {
        while let Some(event) = events.recv().await {
            match follow.step(&event) {
                Step::Progress(done) => progress.set_position(done.max(progress.position())),
                Step::Done(outcome) => return Ok(outcome),
                Step::Failed(reason) => anyhow::bail!("{reason}"),
                Step::Nothing => {}
            }
        }
        anyhow::bail!("the node stopped")
    };
    let outcome = match tokio::time::timeout(Duration::from_secs(timeout), wait).await {
        Ok(outcome) => outcome?,
        Err(_) => Outcome::TimedOut,
    };
    // The last frame stays on screen (where the transfer got to), not a cleared line.
    if outcome == Outcome::TimedOut {
        progress.abandon();
    } else {
        progress.set_position(sent["size"].as_u64().unwrap_or(0));
        progress.finish();
    }
    Ok((sent, outcome))
}

/// Shows a bar per attachment being downloaded, and a line when it is saved or fails.
#[allow(clippy::print_stdout, reason = "the daemon reports saved attachments on stdout")]
pub(crate) async fn show_downloads(node: kith_node::Node) {
    let mut events = node.subscribe();
    let bars = MultiProgress::new();
    let mut shown: HashMap<kith_node::kith_protocol::MediaId, ProgressBar> = HashMap::new();
    loop {
        let event = match events.recv().await {
            Ok(NodeEvent::Media(event)) => event,
            Ok(_) => continue,
            Err(kith_node::EventsClosed) => return,
        };
        match event {
            MediaEvent::Progress {
                media,
                direction: TransferDirection::Receiving,
                bytes_done,
                bytes,
                ..
            } => {
                let progress = match shown.entry(media) {
                    std::collections::hash_map::Entry::Occupied(bar) => bar.into_mut(),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        // Labelled with the file's name, as its sender gave it (sanitised).
                        let name = node
                            .attachments(None)
                            .await
                            .ok()
                            .and_then(|all| all.into_iter().find(|a| a.media == media))
                            .map_or_else(|| "a file".to_owned(), |a| a.name);
                        let name = kith_node::kith_core::text::single_line(&name).into_owned();
                        slot.insert(bars.add(bar(bytes, &format!("receiving {name}"))))
                    }
                };
                progress.set_position(bytes_done);
            }
            MediaEvent::Saved { media, path, .. } => {
                if let Some(progress) = shown.remove(&media) {
                    progress.finish_and_clear();
                }
                say!("attachment saved: {}", path.display());
            }
            MediaEvent::Failed { media, reason, .. } => {
                if let Some(progress) = shown.remove(&media) {
                    progress.abandon();
                }
                say!("attachment failed: {reason}");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(relay: Option<&str>, done: u32) -> Value {
        json!({ "type": "media_progress", "media": "m", "direction": "sending", "relay": relay,
                "chunks_done": done, "chunks": 3, "bytes_done": u64::from(done) * 10 })
    }

    /// Issue 18: `send-file` to a recipient who was online said "bob's relay holds the file"
    /// as soon as a relay had every chunk, while Bob himself was still fetching it.
    #[test]
    fn a_relay_holding_the_file_does_not_end_a_transfer_the_recipient_itself_is_fetching() {
        let uploaded = json!({ "type": "media_uploaded", "media": "m", "relay": "r" });
        let mut follow = Follow { media: "m".into(), direct: false };
        assert_eq!(follow.step(&progress(None, 1)), Step::Progress(10));
        assert_eq!(follow.step(&progress(Some("r"), 3)), Step::Progress(30));
        assert_eq!(follow.step(&uploaded), Step::Nothing, "Bob is fetching it himself");
        assert_eq!(follow.step(&progress(None, 3)), Step::Done(Outcome::Delivered));
        // Nobody fetching directly (Bob offline): the relay holding it is where it ends.
        let mut follow = Follow { media: "m".into(), direct: false };
        assert_eq!(follow.step(&progress(Some("r"), 3)), Step::Progress(30));
        assert_eq!(follow.step(&uploaded), Step::Done(Outcome::OnRelay));
        // Other attachments' events are not this one's.
        let other = json!({ "type": "media_failed", "media": "x", "reason": "no" });
        assert_eq!(follow.step(&other), Step::Nothing);
        let failed = json!({ "type": "media_failed", "media": "m", "reason": "refused" });
        assert_eq!(follow.step(&failed), Step::Failed("refused".into()));
    }
}
