//! What the chat window holds and how events and keys change it (no I/O here: the run loop
//! in `mod.rs` carries out what [`Action`]s ask for).

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::{Value, json};

use crate::render::{Names, name_of};

/// A peer's typing indicator disappears this long after its last "started".
pub(crate) const TYPING_SHOWN_FOR: Duration = Duration::from_secs(6);

/// Whom a conversation is with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Conversation {
    /// A contact (or a stranger's request), by peer id.
    Contact(String),
    /// A group, by id (hex).
    Group(String),
}

impl Conversation {
    /// Whether a message or an event (each names a `peer` and perhaps a `group`) is about this
    /// conversation. A group message names its author as `peer`: it belongs to the group.
    pub(crate) fn owns(&self, v: &Value) -> bool {
        let group = v.get("group").and_then(Value::as_str);
        match self {
            Self::Contact(peer) => {
                group.is_none() && v.get("peer").and_then(Value::as_str) == Some(peer.as_str())
            }
            Self::Group(id) => group == Some(id.as_str()),
        }
    }

    /// The conversation a message belongs to.
    pub(crate) fn of(message: &Value) -> Option<Self> {
        match message.get("group").and_then(Value::as_str) {
            Some(group) => Some(Self::Group(group.to_owned())),
            None => {
                message.get("peer").and_then(Value::as_str).map(|p| Self::Contact(p.to_owned()))
            }
        }
    }

    /// Params naming this conversation for `key` ("to"/"peer" for a contact).
    fn target(&self, key: &str) -> (String, Value) {
        match self {
            Self::Contact(peer) => (key.to_owned(), json!(peer)),
            Self::Group(id) => ("group".to_owned(), json!(id)),
        }
    }

    /// A request: `method` for a contact, `group.method` for a group, with `params` and the
    /// conversation under `key` (for a contact).
    pub(crate) fn request(&self, method: &str, key: &str, mut params: Value) -> (String, Value) {
        let (name, value) = self.target(key);
        if let Value::Object(map) = &mut params {
            map.insert(name, value);
        }
        match self {
            Self::Contact(_) => (method.to_owned(), params),
            Self::Group(_) => (format!("group.{method}"), params),
        }
    }

    /// The `history` request for it.
    pub(crate) fn history(&self) -> Value {
        match self {
            Self::Contact(peer) => json!({ "peer": peer, "limit": 1000 }),
            Self::Group(id) => json!({ "group": id, "limit": 1000 }),
        }
    }
}

/// One line of the conversation list.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Whom it is with.
    pub(crate) conversation: Conversation,
    /// Its name (ours for a contact, theirs as `~name` for a stranger, a group's name).
    pub(crate) name: String,
    /// Incoming messages not read yet.
    pub(crate) unread: usize,
    /// When its last message was stored (ms), for the order of the list.
    pub(crate) last: u64,
    /// A stranger's message request, or a group invitation, waiting for an answer.
    pub(crate) pending: bool,
}

/// The link to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Link {
    /// Talking to the daemon.
    #[default]
    Daemon,
    /// Running our own node (no daemon was running).
    Own,
    /// The daemon went away; reconnecting.
    Lost,
}

/// What the chat window shows.
#[derive(Debug, Default)]
pub(crate) struct ChatState {
    /// Every conversation, most recent first.
    pub(crate) entries: Vec<Entry>,
    /// The open conversation (an index into `entries`).
    pub(crate) current: usize,
    /// Names by peer id (ours, else theirs as `~name`).
    pub(crate) names: Names,
    /// The open conversation's messages, oldest first (API message objects).
    pub(crate) messages: Vec<Value>,
    /// The contact's presence, or a group's member count.
    pub(crate) presence: Option<String>,
    /// The open conversation's disappearing-message timer, in seconds (0: off).
    pub(crate) timer: u64,
    /// Who is typing, and until when it shows.
    pub(crate) typing: Option<(String, Instant)>,
    /// The input line, and the cursor in it (in characters).
    pub(crate) input: String,
    pub(crate) cursor: usize,
    /// Rows scrolled up from the newest.
    pub(crate) scroll: usize,
    /// The selected message (an index into `messages`): replies, reactions, edits and
    /// deletions apply to it.
    pub(crate) selected: Option<usize>,
    /// The last search term.
    pub(crate) search: Option<String>,
    /// The last notice (errors, connection state, results).
    pub(crate) notice: String,
    /// The link to the node.
    pub(crate) link: Link,
    /// Rows of the message pane at the last draw (for paging).
    pub(crate) page: usize,
    /// Whether the next draw scrolls the selection into view.
    pub(crate) follow: bool,
}

/// What a key asks the run loop to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Leave the chat.
    Quit,
    /// Send this text, as a reply to the message with this id if one is selected.
    Send { text: String, reply_to: Option<String> },
    /// Run a `/command`.
    Command(String),
    /// A key went into the input (we may be typing).
    Typed,
    /// Open another conversation (an index into `entries`).
    Open(usize),
    /// Nothing for the loop.
    None,
}

impl ChatState {
    /// The open conversation.
    pub(crate) fn conversation(&self) -> Option<&Conversation> {
        self.entries.get(self.current).map(|e| &e.conversation)
    }

    /// The open conversation's name.
    pub(crate) fn name(&self) -> &str {
        self.entries.get(self.current).map_or("", |e| e.name.as_str())
    }

    /// The selected message.
    pub(crate) fn selected_message(&self) -> Option<&Value> {
        self.selected.and_then(|i| self.messages.get(i))
    }

    /// Puts the most recent conversation first, keeping the open one open.
    pub(crate) fn sort_entries(&mut self) {
        let open = self.conversation().cloned();
        self.entries.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.name.cmp(&b.name)));
        if let Some(open) = open {
            self.current = self.entries.iter().position(|e| e.conversation == open).unwrap_or(0);
        }
    }

    pub(crate) fn upsert(&mut self, message: Value) {
        let id = message.get("id").cloned();
        match self.messages.iter_mut().find(|m| m.get("id") == id.as_ref()) {
            Some(existing) => *existing = message,
            None => self.messages.push(message),
        }
    }

    fn set_status(&mut self, id: &str, status: &str, failure: Option<&str>) {
        let found =
            self.messages.iter_mut().find(|m| m.get("id").and_then(Value::as_str) == Some(id));
        if let Some(m) = found.and_then(Value::as_object_mut) {
            m.insert("status".into(), json!(status));
            m.insert("failure".into(), json!(failure));
        }
    }

    /// Follows an attachment of the open conversation: progress both ways, saved, failed.
    fn update_attachment(&mut self, kind: &str, event: &Value) {
        let id = event.get("message").and_then(Value::as_str);
        let found = self.messages.iter_mut().find(|m| m.get("id").and_then(Value::as_str) == id);
        let Some(message) = found.and_then(Value::as_object_mut) else { return };
        let attachment = message.entry("attachment").or_insert_with(|| json!({}));
        if attachment.is_null() {
            *attachment = json!({});
        }
        let Some(a) = attachment.as_object_mut() else { return };
        match kind {
            "media_progress" => {
                let state =
                    if event["direction"] == "receiving" { "downloading" } else { "uploading" };
                a.insert("state".into(), json!(state));
                a.insert("size".into(), event["bytes"].clone());
                a.insert("chunks_done".into(), event["chunks_done"].clone());
                a.insert("chunks".into(), event["chunks"].clone());
            }
            "media_saved" => {
                a.insert("state".into(), json!("saved"));
                a.insert("path".into(), event["path"].clone());
            }
            "media_uploaded" => {
                a.insert("state".into(), json!("sent"));
            }
            "media_failed" => {
                a.insert("state".into(), json!("failed"));
                a.insert("failure".into(), event["reason"].clone());
            }
            _ => {}
        }
    }

    /// A new incoming message for a conversation that is not open: counted unread, the
    /// conversation listed (a stranger's first message adds a request to the list).
    fn count_elsewhere(&mut self, message: &Value) {
        let Some(conversation) = Conversation::of(message) else { return };
        let stored = message["stored_at"].as_u64().unwrap_or(0);
        match self.entries.iter_mut().find(|e| e.conversation == conversation) {
            Some(entry) => {
                entry.unread += 1;
                entry.last = entry.last.max(stored);
            }
            None => {
                let name = match &conversation {
                    Conversation::Contact(peer) => name_of(&self.names, peer),
                    Conversation::Group(id) => id.get(..8).unwrap_or(id).to_owned(),
                };
                // A contact we named has a name without `~`: anyone else is a stranger.
                let named = self
                    .names
                    .get(message["peer"].as_str().unwrap_or(""))
                    .is_some_and(|n| !n.starts_with('~'));
                let pending = matches!(conversation, Conversation::Contact(_)) && !named;
                self.entries.push(Entry { conversation, name, unread: 1, last: stored, pending });
            }
        }
        self.sort_entries();
    }

    /// Applies an API event; returns the id of a new incoming message of the open conversation
    /// (to mark it read).
    pub(crate) fn apply(&mut self, event: &Value) -> Option<String> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let open = self.conversation().cloned();
        let owns = |v: &Value| open.as_ref().is_some_and(|c| c.owns(v));
        let contact = match &open {
            Some(Conversation::Contact(peer)) => Some(peer.clone()),
            _ => None,
        };
        let from_contact = |v: &Value| {
            contact.is_some() && v.get("peer").and_then(Value::as_str) == contact.as_deref()
        };
        match kind {
            "message" if owns(&event["message"]) => {
                let message = event["message"].clone();
                let incoming = message["direction"] == "incoming";
                let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
                if incoming {
                    self.typing = None;
                }
                if let Some(entry) = self.entries.get_mut(self.current) {
                    entry.last = entry.last.max(message["stored_at"].as_u64().unwrap_or(0));
                }
                self.upsert(message);
                return id.filter(|_| incoming);
            }
            "message" if event["message"]["direction"] == "incoming" => {
                self.count_elsewhere(&event["message"]);
            }
            "updated" if owns(&event["message"]) => self.upsert(event["message"].clone()),
            "timer" if owns(event) => self.timer = event["seconds"].as_u64().unwrap_or(0),
            "messages_deleted" if owns(event) => {
                let gone: Vec<&str> = event["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                self.messages.retain(|m| !m["id"].as_str().is_some_and(|id| gone.contains(&id)));
            }
            "status" if owns(event) => {
                let id = event.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
                let status = event.get("status").and_then(Value::as_str).unwrap_or("").to_owned();
                self.set_status(&id, &status, event.get("failure").and_then(Value::as_str));
            }
            "typing" if from_contact(event) => {
                let who = self.name().to_owned();
                self.set_typing(event, who);
            }
            "group_typing" if owns(event) => {
                let peer = event.get("peer").and_then(Value::as_str).unwrap_or("");
                let who = name_of(&self.names, peer);
                self.set_typing(event, who);
            }
            "presence" if from_contact(event) => {
                self.presence = event.get("status").and_then(Value::as_str).map(str::to_owned);
            }
            "group" => self.group_changed(&event["group"]),
            "contact" => self.contact_changed(&event["contact"]),
            "media_progress" | "media_saved" | "media_failed" | "media_uploaded" => {
                self.update_attachment(kind, event);
            }
            "relay_refused" => {
                // Shown on the message: it waits for a direct connection instead.
                let id = event["id"].as_str().unwrap_or("");
                let reason = event["reason"].as_str().unwrap_or("refused").replace('_', " ");
                let name = self.name().to_owned();
                let found = self.messages.iter_mut().find(|m| m["id"] == id);
                if let Some(m) = found.and_then(Value::as_object_mut)
                    && m.get("status").and_then(Value::as_str) == Some("queued")
                {
                    let why =
                        format!("a relay refused it: {reason}; it waits for {name} to be online");
                    m.insert("failure".into(), json!(why));
                }
            }
            "storage_failing" => {
                let reason = event.get("reason").and_then(Value::as_str).unwrap_or("");
                self.notice = format!(
                    "the node cannot save ({reason}): nothing new is sent or acknowledged until \
                     there is room again"
                );
            }
            "storage_recovered" => {
                self.notice = "the node saves again; what waited has gone out".into();
            }
            "identity_changed" if from_contact(event) => {
                self.notice = format!(
                    "{}'s safety number changed: verify it with `kith contact verify`",
                    self.name()
                );
            }
            "session_reset" if from_contact(event) => {
                self.notice = format!(
                    "the session with {} started anew (a restored backup?); same safety number",
                    self.name()
                );
            }
            _ => {}
        }
        None
    }

    fn set_typing(&mut self, event: &Value, who: String) {
        let typing = event.get("typing").and_then(Value::as_bool).unwrap_or(false);
        self.typing = typing.then(|| (who, Instant::now() + TYPING_SHOWN_FOR));
    }

    /// A group's name, members or our membership changed.
    pub(crate) fn group_changed(&mut self, group: &Value) {
        let Some(id) = group.get("id").and_then(Value::as_str) else { return };
        let conversation = Conversation::Group(id.to_owned());
        let name = group["name"].as_str().unwrap_or(id).to_owned();
        let pending = group["invited_by"].is_string();
        match self.entries.iter_mut().find(|e| e.conversation == conversation) {
            Some(entry) => {
                entry.name = name;
                entry.pending = pending;
            }
            None if group["joined"] == true => {
                self.entries.push(Entry {
                    conversation: conversation.clone(),
                    name,
                    unread: 0,
                    last: 0,
                    pending,
                });
            }
            None => {}
        }
        if self.conversation() == Some(&conversation) {
            self.show_group(group);
        }
    }

    /// A contact was added, renamed or answered.
    fn contact_changed(&mut self, contact: &Value) {
        let Some(peer) = contact.get("peer_id").and_then(Value::as_str) else { return };
        let name = match (contact["name"].as_str(), contact["profile_name"].as_str()) {
            (Some(ours), _) => ours.to_owned(),
            (None, Some(theirs)) => format!("~{theirs}"),
            (None, None) => return,
        };
        self.names.insert(peer.to_owned(), name.clone());
        let conversation = Conversation::Contact(peer.to_owned());
        if let Some(entry) = self.entries.iter_mut().find(|e| e.conversation == conversation) {
            entry.name = name;
            entry.pending = contact["name"].is_null();
        }
    }

    /// Shows a group's member count and whether we are still in it.
    pub(crate) fn show_group(&mut self, group: &Value) {
        let members = group["members"].as_array().map_or(0, Vec::len);
        let noun = if members == 1 { "member" } else { "members" };
        self.presence = Some(format!("{members} {noun}"));
        if group["joined"] == false {
            self.notice = "you are no longer in this group".into();
        } else if group["invited_by"].is_string() {
            let by = name_of(&self.names, group["invited_by"].as_str().unwrap_or(""));
            self.notice = format!("{by} added you: /accept to stay, /decline to leave");
        }
    }

    /// The byte offset of the cursor in the input.
    fn cursor_byte(&self) -> usize {
        self.input.char_indices().nth(self.cursor).map_or(self.input.len(), |(i, _)| i)
    }

    /// Selects the message `step` away from the selection (from the newest if none).
    fn select(&mut self, up: bool) {
        let last = self.messages.len().checked_sub(1);
        self.selected = match (self.selected, up) {
            (None, true) => last,
            (None, false) => None,
            (Some(i), true) => Some(i.saturating_sub(1)),
            (Some(i), false) if Some(i) == last => None,
            (Some(i), false) => Some(i + 1),
        };
        if self.selected.is_none() {
            self.scroll = 0;
        }
        self.follow = true;
    }

    /// Applies a key.
    pub(crate) fn key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let page = self.page.max(2) / 2;
        match key.code {
            KeyCode::Char('c' | 'q') if ctrl => return Action::Quit,
            KeyCode::Esc if self.selected.is_some() => {
                self.selected = None;
                self.scroll = 0;
            }
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                self.cursor = 0;
            }
            KeyCode::Tab | KeyCode::Char('n')
                if (ctrl || key.code == KeyCode::Tab) && !self.entries.is_empty() =>
            {
                return Action::Open((self.current + 1) % self.entries.len());
            }
            KeyCode::BackTab | KeyCode::Char('p')
                if (ctrl || key.code == KeyCode::BackTab) && !self.entries.is_empty() =>
            {
                let n = self.entries.len();
                return Action::Open((self.current + n - 1) % n);
            }
            KeyCode::Enter => {
                let text = self.input.trim().to_owned();
                self.input.clear();
                self.cursor = 0;
                if text.is_empty() {
                    return Action::None;
                }
                if let Some(command) = text.strip_prefix('/') {
                    return Action::Command(command.to_owned());
                }
                let reply_to =
                    self.selected_message().and_then(|m| m["id"].as_str()).map(str::to_owned);
                self.selected = None;
                self.scroll = 0;
                return Action::Send { text, reply_to };
            }
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                let at = self.cursor_byte();
                self.input.remove(at);
            }
            KeyCode::Delete if self.cursor < self.input.chars().count() => {
                let at = self.cursor_byte();
                self.input.remove(at);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End if self.input.is_empty() => {
                self.selected = None;
                self.scroll = 0;
            }
            KeyCode::End => self.cursor = self.input.chars().count(),
            KeyCode::Up => self.select(true),
            KeyCode::Down => self.select(false),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(page),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::Char(c) if !ctrl => {
                let at = self.cursor_byte();
                self.input.insert(at, c);
                self.cursor += 1;
                return Action::Typed;
            }
            _ => {}
        }
        Action::None
    }

    /// Selects the newest message older than the selection whose text holds `term` (any
    /// case); says how it went in the notice.
    pub(crate) fn find(&mut self, term: &str) {
        let term = term.to_lowercase();
        let before = self.selected.unwrap_or(self.messages.len());
        let found = self.messages[..before.min(self.messages.len())].iter().rposition(|m| {
            m["text"].as_str().is_some_and(|t| t.to_lowercase().contains(&term))
                || m["file_name"].as_str().is_some_and(|t| t.to_lowercase().contains(&term))
        });
        match found {
            Some(i) => {
                self.selected = Some(i);
                self.follow = true;
                let total = self
                    .messages
                    .iter()
                    .filter(|m| {
                        m["text"].as_str().is_some_and(|t| t.to_lowercase().contains(&term))
                    })
                    .count();
                self.notice = format!("found `{term}` ({total} in all): /search again for older");
            }
            None => self.notice = format!("no older message holds `{term}`"),
        }
        self.search = Some(term);
    }
}
