//! `kith daemon --notify` and `--on-message CMD`: telling the user, or a script, that a
//! message came.
//!
//! Both are off by default. `--on-message` runs `CMD` through `sh -c` once per new incoming
//! message, one at a time, with the message as one JSON object on its standard input: the
//! message's fields as the control API gives them (`id`, `peer`, `group`, `kind`, `text`,
//! `file_name`, `sent_at`, ...) plus `from` (our name for the sender, else their own as
//! `~name`, else null), `group_name` and `request` (a stranger's message). Peer-controlled text
//! reaches the command only as JSON on stdin, never in its arguments or environment.
//! `--notify` raises a desktop notification (the sender and the first line of the text) where
//! a notification service answers; where none does, it says so once in the log.

use std::process::Stdio;
use std::time::Duration;

use kith_node::kith_core::engine::Event;
use kith_node::kith_core::model::{Direction, Message};
use kith_node::rpc::json::MessageJson;
use kith_node::{Node, NodeEvent};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// How long one `--on-message` command may run before it is killed.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest notification body shown, in characters.
const BODY_CHARS: usize = 200;

/// What to do for each new message.
#[derive(Clone, Debug, Default)]
pub(crate) struct Notify {
    /// Raise a desktop notification.
    pub(crate) desktop: bool,
    /// Run this shell command with the message as JSON on stdin.
    pub(crate) command: Option<String>,
}

impl Notify {
    fn enabled(&self) -> bool {
        self.desktop || self.command.is_some()
    }
}

/// Watches `node`'s events until it stops, notifying as `notify` asks.
pub(crate) async fn run(node: Node, notify: Notify) {
    if !notify.enabled() {
        return;
    }
    let mut events = node.subscribe();
    let mut desktop_failed = false;
    loop {
        let message = match events.recv().await {
            Ok(NodeEvent::Engine(Event::Message(m))) if m.direction == Direction::Incoming => m,
            Ok(NodeEvent::Lagged { missed, .. }) => {
                tracing::warn!("{missed} events went by unseen: some messages were not notified");
                continue;
            }
            Ok(_) => continue,
            Err(_) => return,
        };
        let Ok(described) = describe(&node, &message).await else { return };
        if let Some(command) = &notify.command {
            run_command(command, &described).await;
        }
        if notify.desktop && !desktop_failed {
            desktop_failed = !show_desktop(&described).await;
        }
    }
}

/// The message as `--on-message` gets it: its API fields plus names.
async fn describe(node: &Node, message: &Message) -> Result<Value, kith_node::NodeError> {
    let contact = node.contact(message.peer).await?;
    let from = contact.as_ref().and_then(|c| match (&c.name, &c.profile_name) {
        (Some(ours), _) => Some(ours.clone()),
        (None, Some(theirs)) => Some(format!("~{theirs}")),
        (None, None) => None,
    });
    let request = message.group.is_none() && contact.as_ref().is_none_or(|c| c.name.is_none());
    let group_name = match message.group {
        Some(group) => node.group(group).await?.map(|g| g.name),
        None => None,
    };
    let mut value = serde_json::to_value(MessageJson::from(message)).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.insert("from".into(), json!(from));
        fields.insert("group_name".into(), json!(group_name));
        fields.insert("request".into(), json!(request));
    }
    Ok(value)
}

/// Runs `command` with `message` on stdin, waiting for it (at most [`COMMAND_TIMEOUT`]).
async fn run_command(command: &str, message: &Value) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!("--on-message: cannot start `sh`: {e}");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let mut line = message.to_string();
        line.push('\n');
        // A command that does not read its input is its own business.
        let _ = stdin.write_all(line.as_bytes()).await;
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!("--on-message command exited with {status}"),
        Ok(Err(e)) => tracing::warn!("--on-message command: {e}"),
        Err(_) => {
            tracing::warn!(
                "--on-message command still running after {} s: killed",
                COMMAND_TIMEOUT.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

/// The notification's title and body for `message` (sanitised for display, body cut short).
fn notification_text(message: &Value) -> (String, String) {
    let from = message["from"].as_str().unwrap_or("someone new");
    let title = match message["group_name"].as_str() {
        Some(group) => format!("{from} in {group}"),
        None if message["request"] == true => format!("Message request from {from}"),
        None => from.to_owned(),
    };
    let body = match message["kind"].as_str() {
        Some("media") => {
            format!("[file {}]", message["file_name"].as_str().unwrap_or("attachment"))
        }
        _ => message["text"].as_str().unwrap_or_default().lines().next().unwrap_or("").to_owned(),
    };
    let clean = |s: &str| kith_node::kith_core::text::for_terminal(s).into_owned();
    let mut body = clean(&body);
    if body.chars().count() > BODY_CHARS {
        body = body.chars().take(BODY_CHARS).chain(std::iter::once('…')).collect();
    }
    (clean(&title), body)
}

/// Shows a desktop notification; false if no notification service answered.
async fn show_desktop(message: &Value) -> bool {
    let (title, body) = notification_text(message);
    let shown = tokio::task::spawn_blocking(move || {
        notify_rust::Notification::new().appname("Kith").summary(&title).body(&body).show()
    })
    .await;
    match shown {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(
                "--notify: no desktop notification service answered ({e}); not trying again"
            );
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_name_the_sender_and_show_clean_short_text() {
        let m = json!({"from": "bob", "kind": "text", "text": "hi\u{1b}[2J there\nsecond line"});
        let (title, body) = notification_text(&m);
        assert_eq!(title, "bob");
        assert!(!body.contains('\u{1b}') && body.ends_with("there"), "{body}");
        let m = json!({"from": "~Eve", "request": true, "kind": "text", "text": "x".repeat(500)});
        let (title, body) = notification_text(&m);
        assert_eq!(title, "Message request from ~Eve");
        assert_eq!(body.chars().count(), BODY_CHARS + 1);
        let m =
            json!({"from": "ann", "group_name": "climbers", "kind": "media", "file_name": "a.jpg"});
        assert_eq!(notification_text(&m), ("ann in climbers".into(), "[file a.jpg]".into()));
    }
}
