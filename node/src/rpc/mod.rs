//! The control API: JSON-RPC 2.0, one JSON object per line, over a Unix socket in the profile
//! directory (`kith.sock`, owner-only). `kith daemon` serves it; the `kith` CLI and apps in any
//! language call it. The same [`dispatch`] also runs in-process, so the CLI has a single code
//! path whether or not a daemon is running.
//!
//! Requests: `{"jsonrpc":"2.0","id":1,"method":"send","params":{"to":"bob","text":"hi"}}`.
//! After `subscribe`, the connection also receives notifications
//! `{"jsonrpc":"2.0","method":"event","params":{"type":"message",...}}` (see [`EventJson`]).
//!
//! | method | params | result |
//! |---|---|---|
//! | `id` | – | `{peer_id, contact, display_name, addresses}` |
//! | `contact.add` | `{contact, name}` | `{peer_id}` |
//! | `contact.list` | – | `[Contact]` |
//! | `contact.verify` | `{contact, mark}` | `{safety_number, verified}` |
//! | `contact.trust` | `{contact}` | `{}` — accept a changed identity key |
//! | `contact.block` | `{contact, blocked}` | `{}` |
//! | `send` | `{to, text, reply_to?, wait?, timeout_ms?}` | `{id, status, failure}`; `wait` = `sent`/`delivered`/`read` |
//! | `react` | `{to, target, emoji, remove?}` | `{id}` |
//! | `edit` | `{to, target, text}` | `{id}` |
//! | `delete` | `{to, target}` | `{id}` |
//! | `read` | `{peer, ids}` | `{}` |
//! | `typing` | `{to, typing}` | `{}` |
//! | `presence` | `{status}` (`online`/`away`/`offline`) | `{}` |
//! | `profile.set` | `{name}` | `{}` |
//! | `send_file` | `{to, path, caption?}` | `{id, media, size, chunks}`; `path` absolute |
//! | `attachments` | `{peer?}` | `[Attachment]` |
//! | `history` | `{peer or group, limit?, before?}` | `[Message]`, oldest first, attachments with their state |
//! | `message` | `{id}` | `Message` or `null` |
//! | `group.create` | `{name, members}` | `{group}`; `members` an array of contacts |
//! | `group.list` | – | `[Group]` |
//! | `group.info` | `{group}` | `Group` |
//! | `group.add` / `group.remove` / `group.promote` | `{group, member}` | `{}` (admins) |
//! | `group.leave` | `{group}` | `{}` |
//! | `group.rename` | `{group, name}` | `{}` (admins) |
//! | `group.send` | `{group, text, reply_to?}` | `{id}` |
//! | `group.react` | `{group, target, emoji, remove?}` | `{id}` |
//! | `group.edit` / `group.delete` | `{group, target, text?}` | `{id}` |
//! | `group.read` | `{group, ids}` | `{}` — read receipts go to each author |
//! | `group.typing` | `{group, typing}` | `{}` |
//! | `connect` | `{address}` | `{}` |
//! | `peers` | – | `[peer_id]` |
//! | `subscribe` | – | `true`, then `event` notifications |
//! | `shutdown` | – | `true`, then the daemon stops |
//!
//! Contacts (`to`, `peer`, `contact`, `member`) are names or peer ids; groups are names or
//! hex ids (a prefix of 8 or more characters will do). Errors use the JSON-RPC codes
//! (-32700 parse, -32600 invalid request, -32601 unknown method, -32602 invalid params) and
//! -32000 for a refused operation, with a message saying why.

pub mod json;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_core::engine::{Command, CommandResult, GroupCommand};
use kith_core::identity::ContactString;
use kith_core::model::MessageStatus;
use kith_protocol::content::{PresenceStatus, TypingState};
use kith_protocol::{GroupId, MessageId, UserId};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub use json::{AttachmentJson, ContactJson, EventJson, GroupJson, MessageJson};

use crate::{Node, NodeError, NodeEvent};

/// The socket's file name in the profile directory.
pub const SOCKET_NAME: &str = "kith.sock";
/// Longest request line accepted (a maximum-size text plus JSON escaping fits).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Notifications buffered per connection before the slowest are dropped.
pub const NOTIFICATION_BUFFER: usize = 4096;
/// Default wait for `send` with `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The socket path of a profile directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// A JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// The JSON-RPC error code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    fn invalid_params(message: impl Into<String>) -> Self {
        Self { code: -32602, message: message.into() }
    }

    fn refused(message: impl std::fmt::Display) -> Self {
        Self { code: -32000, message: message.to_string() }
    }
}

impl From<NodeError> for RpcError {
    fn from(e: NodeError) -> Self {
        Self::refused(e)
    }
}

/// Why relays refused message `id`, from the events seen so far (empty if none did).
fn relay_refusals(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    id: MessageId,
) -> String {
    let mut reasons: Vec<&'static str> = Vec::new();
    loop {
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        };
        if let NodeEvent::RelayRefused { id: refused, reason, .. } = event
            && refused == id
        {
            let label = crate::relay::metrics::reason_label(reason);
            if !reasons.contains(&label) {
                reasons.push(label);
            }
        }
    }
    if reasons.is_empty() {
        String::new()
    } else {
        format!(
            " (the peer is unreachable and its relays refused the message: {})",
            reasons.join(", ")
        )
    }
}

fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("`{name}` (a string) is required")))
}

fn message_id(text: &str) -> Result<MessageId, RpcError> {
    MessageId::from_hex(text)
        .ok_or_else(|| RpcError::invalid_params(format!("`{text}` is not a message id")))
}

async fn user(node: &Node, params: &Value, name: &str) -> Result<UserId, RpcError> {
    Ok(node.resolve(str_param(params, name)?).await?)
}

async fn group(node: &Node, params: &Value) -> Result<GroupId, RpcError> {
    Ok(node.resolve_group(str_param(params, "group")?).await?)
}

fn message_ids(params: &Value) -> Result<Vec<MessageId>, RpcError> {
    params
        .get("ids")
        .and_then(Value::as_array)
        .ok_or_else(|| RpcError::invalid_params("`ids` (an array) is required"))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| RpcError::invalid_params("ids are strings"))
                .and_then(message_id)
        })
        .collect()
}

/// A group call: `command` built from the params, carried out in the named group.
async fn in_group(node: &Node, params: &Value, command: GroupCommand) -> Result<Value, RpcError> {
    queued(node, Command::Group { group: group(node, params).await?, command }).await
}

fn wait_target(word: &str) -> Result<MessageStatus, RpcError> {
    match word {
        "queued" => Ok(MessageStatus::Queued),
        "sent" => Ok(MessageStatus::Sent),
        "delivered" => Ok(MessageStatus::Delivered),
        "read" => Ok(MessageStatus::Read),
        other => Err(RpcError::invalid_params(format!(
            "cannot wait for `{other}`: use sent, delivered or read"
        ))),
    }
}

async fn queued(node: &Node, command: Command) -> Result<Value, RpcError> {
    match node.command(command).await? {
        CommandResult::Queued(id) => Ok(json!({ "id": id.to_string() })),
        CommandResult::Group(id) => Ok(json!({ "group": id.to_string() })),
        _ => Ok(json!({})),
    }
}

/// Carries out one API call on `node`.
pub async fn dispatch(node: &Node, method: &str, params: Value) -> Result<Value, RpcError> {
    let p = &params;
    match method {
        "id" => {
            let addresses: Vec<String> =
                node.addresses().await?.iter().map(ToString::to_string).collect();
            Ok(json!({
                "peer_id": node.peer_id().to_string(),
                "contact": node.contact_string().to_string(),
                "display_name": node.profile_name().await?,
                "addresses": addresses,
            }))
        }
        "contact.add" => {
            let contact: ContactString =
                str_param(p, "contact")?.parse().map_err(RpcError::invalid_params_from)?;
            node.add_contact(&contact, str_param(p, "name")?).await?;
            Ok(json!({ "peer_id": json::peer(&contact.user) }))
        }
        "contact.list" => {
            let contacts = node.contacts().await?;
            Ok(serde_json::to_value(contacts.iter().map(ContactJson::from).collect::<Vec<_>>())
                .unwrap_or(Value::Null))
        }
        "contact.verify" => {
            let user = user(node, p, "contact").await?;
            let number = node.safety_number(user).await?.ok_or_else(|| {
                RpcError::refused(
                    "no identity key known for this contact yet: exchange a message first",
                )
            })?;
            let mark = p.get("mark").and_then(Value::as_bool).unwrap_or(false);
            if mark {
                node.command(Command::VerifyContact { user }).await?;
            }
            let verified = node.contact(user).await?.is_some_and(|c| c.verified);
            Ok(json!({ "safety_number": number.to_string(), "verified": verified }))
        }
        "contact.trust" => {
            queued(node, Command::TrustIdentity { user: user(node, p, "contact").await? }).await
        }
        "contact.block" => {
            let blocked = p.get("blocked").and_then(Value::as_bool).unwrap_or(true);
            queued(node, Command::Block { user: user(node, p, "contact").await?, blocked }).await
        }
        "send" => {
            let to = user(node, p, "to").await?;
            let reply_to = p.get("reply_to").and_then(Value::as_str).map(message_id).transpose()?;
            // Subscribed before queueing: a relay's refusal can come back within the wait.
            let mut events = node.subscribe();
            let CommandResult::Queued(id) = node
                .command(Command::SendText { to, text: str_param(p, "text")?.to_owned(), reply_to })
                .await?
            else {
                return Err(RpcError::refused("nothing was queued"));
            };
            let status = match p.get("wait").and_then(Value::as_str) {
                Some(word) => {
                    let timeout = p
                        .get("timeout_ms")
                        .and_then(Value::as_u64)
                        .map_or(DEFAULT_WAIT, Duration::from_millis);
                    match node.wait_for_status(id, wait_target(word)?, timeout).await {
                        Err(NodeError::Timeout(what)) => {
                            let why = relay_refusals(&mut events, id);
                            return Err(RpcError::refused(format!(
                                "timed out waiting for {what}{why}"
                            )));
                        }
                        other => other?,
                    }
                }
                None => MessageStatus::Queued,
            };
            let (status, failure) = json::status(&status);
            Ok(json!({ "id": id.to_string(), "status": status, "failure": failure }))
        }
        "react" => {
            let command = Command::React {
                to: user(node, p, "to").await?,
                target: message_id(str_param(p, "target")?)?,
                emoji: str_param(p, "emoji")?.to_owned(),
                remove: p.get("remove").and_then(Value::as_bool).unwrap_or(false),
            };
            queued(node, command).await
        }
        "edit" => {
            let command = Command::Edit {
                to: user(node, p, "to").await?,
                target: message_id(str_param(p, "target")?)?,
                text: str_param(p, "text")?.to_owned(),
            };
            queued(node, command).await
        }
        "delete" => {
            let command = Command::Delete {
                to: user(node, p, "to").await?,
                target: message_id(str_param(p, "target")?)?,
            };
            queued(node, command).await
        }
        "read" => {
            let ids = message_ids(p)?;
            queued(node, Command::MarkRead { peer: user(node, p, "peer").await?, ids }).await
        }
        "group.create" => {
            let mut members = Vec::new();
            for name in p.get("members").and_then(Value::as_array).into_iter().flatten() {
                let name =
                    name.as_str().ok_or_else(|| RpcError::invalid_params("members are strings"))?;
                members.push(node.resolve(name).await?);
            }
            let name = str_param(p, "name")?.to_owned();
            queued(node, Command::CreateGroup { name, members }).await
        }
        "group.list" => {
            let groups = node.groups().await?;
            Ok(serde_json::to_value(groups.iter().map(GroupJson::from).collect::<Vec<_>>())
                .unwrap_or(Value::Null))
        }
        "group.info" => {
            let id = group(node, p).await?;
            let found = node.group(id).await?.ok_or(NodeError::UnknownGroup(id.to_string()))?;
            Ok(serde_json::to_value(GroupJson::from(&found)).unwrap_or(Value::Null))
        }
        "group.add" => {
            in_group(node, p, GroupCommand::Add { member: user(node, p, "member").await? }).await
        }
        "group.remove" => {
            in_group(node, p, GroupCommand::Remove { member: user(node, p, "member").await? }).await
        }
        "group.promote" => {
            in_group(node, p, GroupCommand::Promote { member: user(node, p, "member").await? })
                .await
        }
        "group.leave" => in_group(node, p, GroupCommand::Leave).await,
        "group.rename" => {
            in_group(node, p, GroupCommand::Rename { name: str_param(p, "name")?.to_owned() }).await
        }
        "group.send" => {
            let reply_to = p.get("reply_to").and_then(Value::as_str).map(message_id).transpose()?;
            let text = str_param(p, "text")?.to_owned();
            in_group(node, p, GroupCommand::Send { text, reply_to }).await
        }
        "group.react" => {
            let command = GroupCommand::React {
                target: message_id(str_param(p, "target")?)?,
                emoji: str_param(p, "emoji")?.to_owned(),
                remove: p.get("remove").and_then(Value::as_bool).unwrap_or(false),
            };
            in_group(node, p, command).await
        }
        "group.edit" => {
            let command = GroupCommand::Edit {
                target: message_id(str_param(p, "target")?)?,
                text: str_param(p, "text")?.to_owned(),
            };
            in_group(node, p, command).await
        }
        "group.delete" => {
            let target = message_id(str_param(p, "target")?)?;
            in_group(node, p, GroupCommand::Delete { target }).await
        }
        "group.read" => in_group(node, p, GroupCommand::MarkRead { ids: message_ids(p)? }).await,
        "group.typing" => {
            let typing = p.get("typing").and_then(Value::as_bool).unwrap_or(true);
            let state = if typing { TypingState::Started } else { TypingState::Stopped };
            in_group(node, p, GroupCommand::Typing { state }).await
        }
        "typing" => {
            let typing = p.get("typing").and_then(Value::as_bool).unwrap_or(true);
            let state = if typing { TypingState::Started } else { TypingState::Stopped };
            queued(node, Command::Typing { to: user(node, p, "to").await?, state }).await
        }
        "presence" => {
            let status = match str_param(p, "status")? {
                "online" => PresenceStatus::Online,
                "away" => PresenceStatus::Away,
                "offline" => PresenceStatus::Offline,
                other => {
                    return Err(RpcError::invalid_params(format!("unknown presence `{other}`")));
                }
            };
            queued(node, Command::SetPresence { status }).await
        }
        "profile.set" => {
            queued(node, Command::SetProfile { display_name: str_param(p, "name")?.to_owned() })
                .await
        }
        "send_file" => {
            let to = user(node, p, "to").await?;
            let path = PathBuf::from(str_param(p, "path")?);
            if !path.is_absolute() {
                return Err(RpcError::invalid_params("`path` must be absolute"));
            }
            let caption = p.get("caption").and_then(Value::as_str).map(str::to_owned);
            let sent = node.send_file(to, path, caption).await?;
            Ok(json!({
                "id": sent.message.to_string(),
                "media": sent.media.to_string(),
                "size": sent.size,
                "chunks": sent.chunks,
            }))
        }
        "attachments" => {
            let peer = match p.get("peer").and_then(Value::as_str) {
                Some(name) => Some(node.resolve(name).await?),
                None => None,
            };
            let list = node.attachments(peer).await?;
            Ok(serde_json::to_value(list.iter().map(AttachmentJson::from).collect::<Vec<_>>())
                .unwrap_or(Value::Null))
        }
        "history" => {
            let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(100).min(10_000) as usize;
            let before = p.get("before").and_then(Value::as_u64);
            let (messages, attachments) = if p.get("group").is_some() {
                let id = group(node, p).await?;
                (node.group_history(id, before, limit).await?, node.attachments(None).await?)
            } else {
                let peer = user(node, p, "peer").await?;
                (node.history(peer, before, limit).await?, node.attachments(Some(peer)).await?)
            };
            let list: Vec<MessageJson> = messages
                .iter()
                .map(|m| {
                    let mut json = MessageJson::from(m);
                    json.attachment =
                        attachments.iter().find(|a| a.message == m.id).map(AttachmentJson::from);
                    json
                })
                .collect();
            Ok(serde_json::to_value(list).unwrap_or(Value::Null))
        }
        "message" => {
            let message = node.message(message_id(str_param(p, "id")?)?).await?;
            Ok(message
                .as_ref()
                .map(MessageJson::from)
                .map_or(Value::Null, |m| serde_json::to_value(m).unwrap_or(Value::Null)))
        }
        "connect" => {
            let address = str_param(p, "address")?
                .parse()
                .map_err(|_| RpcError::invalid_params("not a multiaddr"))?;
            node.connect(address).await?;
            Ok(json!({}))
        }
        "peers" => {
            let peers: Vec<String> =
                node.connected_peers().await?.iter().map(ToString::to_string).collect();
            Ok(json!(peers))
        }
        _ => Err(RpcError { code: -32601, message: format!("unknown method `{method}`") }),
    }
}

/// Spaces out attachment progress notifications: at most one per attachment and direction
/// every [`PROGRESS_INTERVAL`], and always the one that completes it.
#[derive(Default)]
struct ProgressThrottle {
    last: std::collections::HashMap<(kith_protocol::MediaId, bool), std::time::Instant>,
}

/// Shortest time between two progress notifications of one attachment.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

impl ProgressThrottle {
    fn pass(&mut self, event: &NodeEvent) -> bool {
        let NodeEvent::Media(crate::media::MediaEvent::Progress {
            media,
            direction,
            chunks_done,
            chunks,
            ..
        }) = event
        else {
            return true;
        };
        let key = (*media, *direction == crate::media::TransferDirection::Sending);
        let now = std::time::Instant::now();
        let due = self.last.get(&key).is_none_or(|at| now.duration_since(*at) >= PROGRESS_INTERVAL);
        if due || chunks_done >= chunks {
            if self.last.len() > 1024 {
                self.last.clear();
            }
            self.last.insert(key, now);
            return true;
        }
        false
    }
}

impl RpcError {
    fn invalid_params_from(e: impl std::fmt::Display) -> Self {
        Self::invalid_params(e.to_string())
    }
}

fn response(id: &Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => {
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code, "message": e.message } })
        }
    }
}

/// Serves the API on the profile's socket until the node stops or `shutdown` is called.
/// Returns when the server is ready; the returned receiver fires on `shutdown`.
pub async fn serve(node: Node, data_dir: &Path) -> Result<mpsc::Receiver<()>, std::io::Error> {
    let path = socket_path(data_dir);
    if UnixStream::connect(&path).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "a daemon is already running on this profile",
        ));
    }
    // A stale socket from a crashed daemon.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let (stop_tx, stop_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(connection(node.clone(), stream, stop_tx.clone()));
        }
    });
    Ok(stop_rx)
}

async fn connection(node: Node, stream: UnixStream, stop: mpsc::Sender<()>) {
    let (read, mut write) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Value>(NOTIFICATION_BUFFER);
    let writer = tokio::spawn(async move {
        while let Some(value) = out_rx.recv().await {
            let mut line = value.to_string();
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(read);
    let mut subscribed = false;
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut lines).take(MAX_REQUEST_BYTES as u64 + 1).read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(n) if n > MAX_REQUEST_BYTES => {
                let error = json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request too large"}});
                let _ = out_tx.send(error).await;
                break;
            }
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let request: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let error = json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":format!("parse error: {e}")}});
                let _ = out_tx.send(error).await;
                continue;
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = request.get("method").and_then(Value::as_str).map(str::to_owned) else {
            let _ = out_tx
                .send(response(&id, Err(RpcError { code: -32600, message: "no method".into() })))
                .await;
            continue;
        };
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        match method.as_str() {
            "subscribe" => {
                if !subscribed {
                    subscribed = true;
                    let mut events = node.subscribe();
                    let out = out_tx.clone();
                    tokio::spawn(async move {
                        let mut progress = ProgressThrottle::default();
                        loop {
                            match events.recv().await {
                                Ok(event) => {
                                    if !progress.pass(&event) {
                                        continue;
                                    }
                                    let Some(json) = EventJson::from_event(&event) else {
                                        continue;
                                    };
                                    let note =
                                        json!({"jsonrpc":"2.0","method":"event","params":json});
                                    // A client that does not read loses notifications, not the daemon.
                                    if out.try_send(note).is_err() && out.is_closed() {
                                        return;
                                    }
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                let _ = out_tx.send(response(&id, Ok(json!(true)))).await;
            }
            "shutdown" => {
                let _ = out_tx.send(response(&id, Ok(json!(true)))).await;
                let _ = stop.send(()).await;
            }
            _ => {
                // Calls run concurrently (a `send` waiting for delivery must not block others).
                let (node, out) = (node.clone(), out_tx.clone());
                tokio::spawn(async move {
                    let result = dispatch(&node, &method, params).await;
                    let _ = out.send(response(&id, result)).await;
                });
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
}

/// A client of a daemon's socket.
pub struct RpcClient {
    write: tokio::net::unix::OwnedWriteHalf,
    responses: mpsc::Receiver<Value>,
    notifications: mpsc::Receiver<Value>,
    next_id: u64,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Connects to the daemon of the profile in `data_dir`.
    pub async fn connect(data_dir: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket_path(data_dir)).await?;
        let (read, write) = stream.into_split();
        let (resp_tx, responses) = mpsc::channel(64);
        let (note_tx, notifications) = mpsc::channel(NOTIFICATION_BUFFER);
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
                let sink = if value.get("method").is_some() { &note_tx } else { &resp_tx };
                if sink.send(value).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self { write, responses, notifications, next_id: 0 })
    }

    /// Calls `method` and waits for its result. Calls on one client are sequential.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string();
        line.push('\n');
        let lost = || RpcError { code: -32603, message: "the daemon closed the connection".into() };
        self.write.write_all(line.as_bytes()).await.map_err(|_| lost())?;
        loop {
            let response = self.responses.recv().await.ok_or_else(lost)?;
            if response.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(error) = response.get("error") {
                return Err(RpcError {
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(-32603),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                        .to_owned(),
                });
            }
            return Ok(response.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// The next `event` notification's params (after `subscribe`), or `None` once the
    /// connection closed.
    pub async fn next_event(&mut self) -> Option<Value> {
        self.notifications.recv().await.and_then(|n| n.get("params").cloned())
    }
}
