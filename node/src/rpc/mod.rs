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
//! | `backup.create` | `{path, passphrase?}` | `{code, records, messages, contacts}`: the backup written to `path` (absolute), encrypted under a new 30-digit recovery `code` (shown once; `null` with a passphrase) |
//! | `contact.add` | `{contact, name}` | `{peer_id}` |
//! | `contact.find` | `{contact}` (a contact string or `kith:<peer id>`) | `{peer_id, found}`: connected, or their record in the DHT, within 10 s (`null`: the lookup did not end) |
//! | `contact.list` | – | `[Contact]`; `request`: a stranger who wrote to us (unnamed, not blocked) |
//! | `contact.verify` | `{contact, mark}` | `{safety_number, verified}` |
//! | `contact.trust` | `{contact}` | `{}` — accept a changed identity key |
//! | `contact.block` | `{contact, blocked}` | `{}` — a blocked contact's messages are refused and its group invitations declined |
//! | `contact.rename` | `{contact, name}` | `{}` |
//! | `contact.remove` | `{contact}` | `{}` — the contact and its sessions go, its history stays |
//! | `send` | `{to, text, reply_to?, wait?, timeout_ms?}` | `{id, status, failure}`; `wait` = `sent`/`delivered`/`read`; a wait that times out adds `timed_out: true` and `why` |
//! | `react` | `{to, target, emoji, remove?}` | `{id}` |
//! | `edit` | `{to, target, text}` | `{id}` |
//! | `delete` | `{to, target}` | `{id}` |
//! | `read` | `{peer, ids}` | `{}` |
//! | `forget` | `{peer or group, ids?}` | `{}` — deletes these messages (without `ids`: the whole conversation) on this device only; one not yet sent is not sent |
//! | `disappear` | `{peer or group, seconds?}` | `{seconds, id}` — sets the conversation's disappearing-message timer for everyone in it (0: off; at most a year), a message of the history (`id`, null if it was already set so); without `seconds`, reads it |
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
//! | `group.accept` / `group.decline` | `{group}` | `{}` — answer an invitation (`invited_by` in `Group`); declining leaves |
//! | `group.rename` | `{group, name}` | `{}` (admins) |
//! | `group.send` | `{group, text, reply_to?}` | `{id}` |
//! | `group.send_file` | `{group, path, caption?}` | `{id, media, size, chunks}`; members fetch it from us |
//! | `group.react` | `{group, target, emoji, remove?}` | `{id}` |
//! | `group.edit` / `group.delete` | `{group, target, text?}` | `{id}` |
//! | `group.read` | `{group, ids}` | `{}` — read receipts go to each author |
//! | `group.typing` | `{group, typing}` | `{}` |
//! | `connect` | `{address}` | `{}` |
//! | `peers` | – | `[peer_id]` |
//! | `connections` | – | `[{peer, address, relayed, rtt_ms}]`; `rtt_ms` the last ping's round trip, or null |
//! | `subscribe` | – | `true`, then `event` notifications |
//! | `shutdown` | – | `true`, then the daemon stops |
//!
//! Contacts (`to`, `peer`, `contact`, `member`) are names or peer ids; groups are names or
//! hex ids (a prefix of 8 or more characters will do). Errors use the JSON-RPC codes
//! (-32700 parse, -32600 invalid request, -32601 unknown method, -32602 invalid params) and
//! -32000 for a refused operation, with a message saying why.

pub mod json;
mod params;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_core::engine::{Command, CommandResult, GroupCommand};
use kith_core::identity::ContactString;
use kith_core::model::MessageStatus;
use kith_protocol::content::{PresenceStatus, TypingState};
use kith_protocol::{GroupId, MessageId, UserId};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub use json::{AttachmentJson, ContactJson, EventJson, GroupJson, MessageJson};

use crate::{Node, NodeError, NodeEvent};

/// The socket's file name in the profile directory.
pub const SOCKET_NAME: &str = "kith.sock";
/// Longest request line accepted (a maximum-size text plus JSON escaping fits).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Messages (answers and notifications) queued per connection for its writer. A client that
/// reads no faster holds its event stream back; more than an event buffer behind, it gets a
/// `lagged` event instead of the events it missed.
pub const NOTIFICATION_BUFFER: usize = 4096;
/// Default wait for `send` with `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How long `contact.find` looks for a user in the network.
const FIND_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Runs `work`, which reads the disk, on a blocking thread (not on the socket's task).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RpcError::refused(format!("reading attachments failed: {e}")))
}

/// Writes `bytes` to `path` durably: a temporary file beside it, synced, renamed into place,
/// the directory synced. Owner-only: a backup is encrypted, but it is no one else's.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("partial");
    let mut options = std::fs::File::options();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Why relays refused message `id`, from the events seen so far (empty if none did).
fn relay_refusals(events: &mut crate::Events, id: MessageId) -> String {
    let mut reasons: Vec<&'static str> = Vec::new();
    while let Ok(Some(event)) = events.try_recv() {
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

fn message_id(text: &str) -> Result<MessageId, RpcError> {
    MessageId::from_hex(text)
        .ok_or_else(|| RpcError::invalid_params(format!("`{text}` is not a message id")))
}

fn message_ids(ids: &[String]) -> Result<Vec<MessageId>, RpcError> {
    ids.iter().map(|id| message_id(id)).collect()
}

fn optional_id(id: Option<&str>) -> Result<Option<MessageId>, RpcError> {
    id.map(message_id).transpose()
}

async fn user(node: &Node, name: &str) -> Result<UserId, RpcError> {
    Ok(node.resolve(name).await?)
}

async fn group(node: &Node, name: &str) -> Result<GroupId, RpcError> {
    Ok(node.resolve_group(name).await?)
}

/// A group call: `command` carried out in the group named `name`.
async fn in_group(node: &Node, name: &str, command: GroupCommand) -> Result<Value, RpcError> {
    queued(node, Command::Group { group: group(node, name).await?, command }).await
}

/// The answer to `send_file` and `group.send_file`.
fn sent_json(sent: &crate::SentFile) -> Value {
    json!({
        "id": sent.message.to_string(),
        "media": sent.media.to_string(),
        "size": sent.size,
        "chunks": sent.chunks,
    })
}

fn wait_target(wait: params::WaitFor) -> MessageStatus {
    match wait {
        params::WaitFor::Queued => MessageStatus::Queued,
        params::WaitFor::Sent => MessageStatus::Sent,
        params::WaitFor::Delivered => MessageStatus::Delivered,
        params::WaitFor::Read => MessageStatus::Read,
    }
}

fn typing_state(typing: bool) -> TypingState {
    if typing { TypingState::Started } else { TypingState::Stopped }
}

async fn queued(node: &Node, command: Command) -> Result<Value, RpcError> {
    match node.command(command).await? {
        CommandResult::Queued(id) => Ok(json!({ "id": id.to_string() })),
        CommandResult::Group(id) => Ok(json!({ "group": id.to_string() })),
        _ => Ok(json!({})),
    }
}

fn to_json<T: serde::Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Carries out one API call on `node`. Parameters are typed per method: a missing, unknown
/// or wrong-typed one is refused with -32602 naming it.
pub async fn dispatch(node: &Node, method: &str, params: Value) -> Result<Value, RpcError> {
    use params::parse;
    match method {
        "id" => {
            let params::NoParams {} = parse(params)?;
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
            let p: params::ContactAdd = parse(params)?;
            let contact: ContactString =
                p.contact.parse().map_err(RpcError::invalid_params_from)?;
            node.add_contact(&contact, &p.name).await?;
            Ok(json!({ "peer_id": json::peer(&contact.user) }))
        }
        "backup.create" => {
            let p: params::BackupCreate = parse(params)?;
            let path = PathBuf::from(&p.path);
            if !path.is_absolute() {
                return Err(RpcError::invalid_params("path must be absolute"));
            }
            let (secret, code) = match p.passphrase {
                Some(passphrase) if passphrase.is_empty() => {
                    return Err(RpcError::invalid_params("an empty passphrase protects nothing"));
                }
                Some(passphrase) => (
                    crate::BackupSecretOwned::Passphrase(crate::Passphrase::new(
                        passphrase.into_bytes(),
                    )),
                    None,
                ),
                None => {
                    let code =
                        kith_core::store::RecoveryCode::generate().map_err(RpcError::refused)?;
                    (crate::BackupSecretOwned::Code(code.clone()), Some(code))
                }
            };
            let (bytes, summary) = node.create_backup(secret).await?;
            blocking(move || write_durably(&path, &bytes))
                .await?
                .map_err(|e| RpcError::refused(format!("writing {}: {e}", p.path)))?;
            Ok(json!({
                "code": code.map(|c| c.grouped()),
                "records": summary.records,
                "messages": summary.messages,
                "contacts": summary.contacts,
            }))
        }
        "contact.find" => {
            let p: params::ContactFind = parse(params)?;
            let contact: ContactString =
                p.contact.parse().map_err(RpcError::invalid_params_from)?;
            let found = node.find_user(contact.user, FIND_TIMEOUT).await?;
            Ok(json!({ "peer_id": json::peer(&contact.user), "found": found }))
        }
        "contact.list" => {
            let params::NoParams {} = parse(params)?;
            let mut listed = Vec::new();
            for contact in node.contacts().await? {
                let mut json = ContactJson::from(&contact);
                // A stranger who wrote to us directly (not only a group's member).
                json.request = contact.name.is_none()
                    && !contact.blocked
                    && !node.history(contact.user, None, 1).await?.is_empty();
                listed.push(json);
            }
            Ok(to_json(listed))
        }
        "contact.verify" => {
            let p: params::ContactVerify = parse(params)?;
            let user = user(node, &p.contact).await?;
            let number = node.safety_number(user).await?.ok_or_else(|| {
                RpcError::refused(
                    "no identity key known for this contact yet: exchange a message first",
                )
            })?;
            if p.mark {
                node.command(Command::VerifyContact { user }).await?;
            }
            let verified = node.contact(user).await?.is_some_and(|c| c.verified);
            Ok(json!({ "safety_number": number.to_string(), "verified": verified }))
        }
        "contact.trust" => {
            let p: params::ContactOnly = parse(params)?;
            queued(node, Command::TrustIdentity { user: user(node, &p.contact).await? }).await
        }
        "contact.block" => {
            let p: params::ContactBlock = parse(params)?;
            let user = user(node, &p.contact).await?;
            queued(node, Command::Block { user, blocked: p.blocked }).await
        }
        "contact.rename" => {
            let p: params::ContactRename = parse(params)?;
            let user = user(node, &p.contact).await?;
            let relays = node.contact(user).await?.map(|c| c.relays).unwrap_or_default();
            queued(node, Command::AddContact { user, name: p.name, relays }).await
        }
        "contact.remove" => {
            let p: params::ContactOnly = parse(params)?;
            queued(node, Command::RemoveContact { user: user(node, &p.contact).await? }).await
        }
        "send" => {
            let p: params::Send = parse(params)?;
            let to = user(node, &p.to).await?;
            let reply_to = optional_id(p.reply_to.as_deref())?;
            // Subscribed before queueing: a relay's refusal can come back within the wait.
            let mut events = node.subscribe();
            let CommandResult::Queued(id) =
                node.command(Command::SendText { to, text: p.text, reply_to }).await?
            else {
                return Err(RpcError::refused("nothing was queued"));
            };
            let status = match p.wait {
                Some(wait) => {
                    let timeout = p.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
                    match node.wait_for_status(id, wait_target(wait), timeout).await {
                        Err(NodeError::Timeout(_)) => {
                            // The id, how far the message got, and why it got no further.
                            let status = node.message(id).await?.map(|m| m.status);
                            let (status, failure) =
                                json::status(&status.unwrap_or(MessageStatus::Queued));
                            let (target, _) = json::status(&wait_target(wait));
                            let mut why = format!(
                                "timed out after {} s waiting for {target}",
                                timeout.as_secs_f32()
                            );
                            let refusals = relay_refusals(&mut events, id);
                            if !refusals.is_empty() {
                                why.push_str(&refusals);
                            } else if !node.is_connected(to).await? {
                                why.push_str(" (no connection to the recipient)");
                            }
                            return Ok(json!({
                                "id": id.to_string(),
                                "status": status,
                                "failure": failure,
                                "timed_out": true,
                                "why": why,
                            }));
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
            let p: params::React = parse(params)?;
            let command = Command::React {
                to: user(node, &p.to).await?,
                target: message_id(&p.target)?,
                emoji: p.emoji,
                remove: p.remove,
            };
            queued(node, command).await
        }
        "edit" => {
            let p: params::Edit = parse(params)?;
            let command = Command::Edit {
                to: user(node, &p.to).await?,
                target: message_id(&p.target)?,
                text: p.text,
            };
            queued(node, command).await
        }
        "delete" => {
            let p: params::Delete = parse(params)?;
            let command =
                Command::Delete { to: user(node, &p.to).await?, target: message_id(&p.target)? };
            queued(node, command).await
        }
        "read" => {
            let p: params::Read = parse(params)?;
            let ids = message_ids(&p.ids)?;
            queued(node, Command::MarkRead { peer: user(node, &p.peer).await?, ids }).await
        }
        "group.create" => {
            let p: params::GroupCreate = parse(params)?;
            let mut members = Vec::with_capacity(p.members.len());
            for name in &p.members {
                members.push(user(node, name).await?);
            }
            queued(node, Command::CreateGroup { name: p.name, members }).await
        }
        "group.list" => {
            let params::NoParams {} = parse(params)?;
            let groups = node.groups().await?;
            Ok(to_json(groups.iter().map(GroupJson::from).collect::<Vec<_>>()))
        }
        "group.info" => {
            let p: params::GroupOnly = parse(params)?;
            let id = group(node, &p.group).await?;
            let found = node.group(id).await?.ok_or(NodeError::UnknownGroup(id.to_string()))?;
            Ok(to_json(GroupJson::from(&found)))
        }
        "group.add" | "group.remove" | "group.promote" => {
            let p: params::GroupMember = parse(params)?;
            let member = user(node, &p.member).await?;
            let command = match method {
                "group.add" => GroupCommand::Add { member },
                "group.remove" => GroupCommand::Remove { member },
                _ => GroupCommand::Promote { member },
            };
            in_group(node, &p.group, command).await
        }
        "group.leave" => {
            let p: params::GroupOnly = parse(params)?;
            in_group(node, &p.group, GroupCommand::Leave).await
        }
        "group.accept" => {
            let p: params::GroupOnly = parse(params)?;
            in_group(node, &p.group, GroupCommand::Accept).await
        }
        "group.decline" => {
            let p: params::GroupOnly = parse(params)?;
            in_group(node, &p.group, GroupCommand::Decline).await
        }
        "group.rename" => {
            let p: params::GroupRename = parse(params)?;
            in_group(node, &p.group, GroupCommand::Rename { name: p.name }).await
        }
        "group.send_file" => {
            let p: params::GroupSendFile = parse(params)?;
            let group = group(node, &p.group).await?;
            if !p.path.is_absolute() {
                return Err(RpcError::invalid_params("`path` must be absolute"));
            }
            Ok(sent_json(&node.send_file_to_group(group, p.path, p.caption).await?))
        }
        "group.send" => {
            let p: params::GroupSend = parse(params)?;
            let reply_to = optional_id(p.reply_to.as_deref())?;
            in_group(node, &p.group, GroupCommand::Send { text: p.text, reply_to }).await
        }
        "group.react" => {
            let p: params::GroupReact = parse(params)?;
            let command = GroupCommand::React {
                target: message_id(&p.target)?,
                emoji: p.emoji,
                remove: p.remove,
            };
            in_group(node, &p.group, command).await
        }
        "group.edit" => {
            let p: params::GroupEdit = parse(params)?;
            let command = GroupCommand::Edit { target: message_id(&p.target)?, text: p.text };
            in_group(node, &p.group, command).await
        }
        "group.delete" => {
            let p: params::GroupDelete = parse(params)?;
            let target = message_id(&p.target)?;
            in_group(node, &p.group, GroupCommand::Delete { target }).await
        }
        "group.read" => {
            let p: params::GroupRead = parse(params)?;
            in_group(node, &p.group, GroupCommand::MarkRead { ids: message_ids(&p.ids)? }).await
        }
        "group.typing" => {
            let p: params::GroupTyping = parse(params)?;
            let state = typing_state(p.typing);
            in_group(node, &p.group, GroupCommand::Typing { state }).await
        }
        "typing" => {
            let p: params::Typing = parse(params)?;
            let state = typing_state(p.typing);
            queued(node, Command::Typing { to: user(node, &p.to).await?, state }).await
        }
        "presence" => {
            let p: params::SetPresence = parse(params)?;
            let status = match p.status {
                params::Presence::Online => PresenceStatus::Online,
                params::Presence::Away => PresenceStatus::Away,
                params::Presence::Offline => PresenceStatus::Offline,
            };
            queued(node, Command::SetPresence { status }).await
        }
        "profile.set" => {
            let p: params::ProfileSet = parse(params)?;
            queued(node, Command::SetProfile { display_name: p.name }).await
        }
        "send_file" => {
            let p: params::SendFile = parse(params)?;
            let to = user(node, &p.to).await?;
            if !p.path.is_absolute() {
                return Err(RpcError::invalid_params("`path` must be absolute"));
            }
            Ok(sent_json(&node.send_file(to, p.path, p.caption).await?))
        }
        "attachments" => {
            let p: params::Attachments = parse(params)?;
            let peer = match &p.peer {
                Some(name) => Some(user(node, name).await?),
                None => None,
            };
            let list = node.attachments(peer).await?;
            let list = blocking(move || {
                list.iter().map(|a| AttachmentJson::from(a).with_image_size()).collect::<Vec<_>>()
            })
            .await?;
            Ok(to_json(list))
        }
        "forget" => {
            let p: params::Forget = parse(params)?;
            let ids = p.ids.as_deref().map(message_ids).transpose()?;
            match (&p.group, &p.peer) {
                (Some(name), None) => {
                    let command = match ids {
                        Some(ids) => GroupCommand::DeleteLocally { ids },
                        None => GroupCommand::DeleteHistory,
                    };
                    in_group(node, name, command).await
                }
                (None, Some(name)) => {
                    let peer = user(node, name).await?;
                    let command = match ids {
                        Some(ids) => Command::DeleteLocally { peer, ids },
                        None => Command::DeleteConversation { peer },
                    };
                    queued(node, command).await
                }
                _ => Err(RpcError::invalid_params("give either `peer` or `group`")),
            }
        }
        "disappear" => {
            let p: params::Disappear = parse(params)?;
            let (seconds, message) = match (&p.group, &p.peer) {
                (Some(name), None) => {
                    let group = group(node, name).await?;
                    let message = match p.seconds {
                        Some(seconds) => {
                            let command = GroupCommand::SetDisappearing { seconds };
                            queued(node, Command::Group { group, command }).await?
                        }
                        None => json!({}),
                    };
                    (node.group_disappearing_timer(group).await?, message)
                }
                (None, Some(name)) => {
                    let peer = user(node, name).await?;
                    let message = match p.seconds {
                        Some(seconds) => {
                            queued(node, Command::SetDisappearing { peer, seconds }).await?
                        }
                        None => json!({}),
                    };
                    (node.disappearing_timer(peer).await?, message)
                }
                _ => return Err(RpcError::invalid_params("give either `peer` or `group`")),
            };
            // `id`: the message that set it, if this call changed it.
            Ok(json!({ "seconds": seconds, "id": message.get("id") }))
        }
        "history" => {
            let p: params::History = parse(params)?;
            let limit = usize::try_from(p.limit.unwrap_or(100).min(10_000)).unwrap_or(10_000);
            let (messages, attachments) = match (&p.group, &p.peer) {
                (Some(name), None) => {
                    let id = group(node, name).await?;
                    (node.group_history(id, p.before, limit).await?, node.attachments(None).await?)
                }
                (None, Some(name)) => {
                    let peer = user(node, name).await?;
                    (
                        node.history(peer, p.before, limit).await?,
                        node.attachments(Some(peer)).await?,
                    )
                }
                _ => return Err(RpcError::invalid_params("give either `peer` or `group`")),
            };
            let list = blocking(move || {
                messages
                    .iter()
                    .map(|m| {
                        let mut json = MessageJson::from(m);
                        json.attachment = attachments
                            .iter()
                            .find(|a| a.message == m.id)
                            .map(|a| AttachmentJson::from(a).with_image_size());
                        json
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
            Ok(to_json(list))
        }
        "message" => {
            let p: params::MessageById = parse(params)?;
            let message = node.message(message_id(&p.id)?).await?;
            Ok(message.as_ref().map(MessageJson::from).map_or(Value::Null, to_json))
        }
        "connect" => {
            let p: params::Connect = parse(params)?;
            let address = p
                .address
                .parse()
                .map_err(|_| RpcError::invalid_params("`address`: not a multiaddr"))?;
            node.connect(address).await?;
            Ok(json!({}))
        }
        "peers" => {
            let params::NoParams {} = parse(params)?;
            let peers: Vec<String> =
                node.connected_peers().await?.iter().map(ToString::to_string).collect();
            Ok(json!(peers))
        }
        "connections" => {
            let params::NoParams {} = parse(params)?;
            let connections: Vec<Value> = node
                .connections()
                .await?
                .iter()
                .map(|c| {
                    json!({
                        "peer": c.peer.to_string(),
                        "address": c.address.to_string(),
                        "relayed": c.relayed,
                        "rtt_ms": c.rtt.map(|rtt| rtt.as_secs_f64() * 1e3),
                    })
                })
                .collect();
            Ok(json!(connections))
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

/// What [`read_request`] read.
enum Request {
    /// A line, in the buffer (newline included, if one ended it).
    Line,
    /// A line longer than [`MAX_REQUEST_BYTES`], read to its end and dropped.
    TooLarge,
    /// The client closed the connection.
    End,
}

/// Reads the next request line into `line`, holding at most [`MAX_REQUEST_BYTES`] + 1 bytes
/// of it: a longer line is read through to its newline without being kept.
async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Request> {
    line.clear();
    let n = (&mut *reader).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', line).await?;
    if n == 0 {
        return Ok(Request::End);
    }
    if n <= MAX_REQUEST_BYTES || line.last() == Some(&b'\n') {
        return Ok(Request::Line);
    }
    line.clear();
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(Request::TooLarge);
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(Request::TooLarge);
            }
            None => {
                let len = buffer.len();
                reader.consume(len);
            }
        }
    }
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
    let mut line = Vec::new();
    loop {
        match read_request(&mut lines, &mut line).await {
            Ok(Request::End) | Err(_) => break,
            Ok(Request::TooLarge) => {
                // The whole line was read (and dropped): the connection stays usable.
                let message = format!("request too large (at most {MAX_REQUEST_BYTES} bytes)");
                let error =
                    json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":message}});
                let _ = out_tx.send(error).await;
                continue;
            }
            Ok(Request::Line) => {}
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let request: Value = match serde_json::from_slice(&line) {
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
                                    // A client that does not read holds this task back, not
                                    // the node: once it is a buffer behind, it gets a
                                    // `lagged` event saying what to re-read.
                                    if out.send(note).await.is_err() {
                                        return;
                                    }
                                }
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

    /// Waits until the daemon closes the connection (its process ends, or it drops the
    /// connection), discarding what else it sends.
    pub async fn closed(&mut self) {
        while self.responses.recv().await.is_some() {}
    }

    /// The next `event` notification's params (after `subscribe`), or `None` once the
    /// connection closed.
    pub async fn next_event(&mut self) -> Option<Value> {
        self.notifications.recv().await.and_then(|n| n.get("params").cloned())
    }
}
