//! `kith chat`: a terminal UI for one conversation, with a contact or in a group: scrolling
//! history with delivery marks, who is typing, the contact's presence (a group's member count),
//! and an input line.
//!
//! Keys: Enter sends, Esc or Ctrl-C quits, PageUp/PageDown scroll, Ctrl-U clears the input.

use std::time::{Duration, Instant};

use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures::StreamExt;
use kith_node::kith_core::text::single_line;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::{DefaultTerminal, Frame};
use serde_json::{Value, json};

use crate::conn::Conn;
use crate::render::{Names, message_line, name_of, names};

/// A peer's typing indicator disappears this long after its last "started".
const TYPING_SHOWN_FOR: Duration = Duration::from_secs(6);
/// We report "stopped typing" after this long without a keystroke.
const TYPING_IDLE: Duration = Duration::from_secs(3);

/// Whom the chat window talks with.
#[derive(Debug, Clone)]
pub(crate) enum Conversation {
    /// A contact, by peer id.
    Contact(String),
    /// A group, by id (hex).
    Group(String),
}

impl Default for Conversation {
    fn default() -> Self {
        Self::Contact(String::new())
    }
}

impl Conversation {
    /// Whether a message or an event (each names a `peer` and perhaps a `group`) is about this
    /// conversation. A group message names its author as `peer`: it belongs to the group, not
    /// to the chat with its author.
    fn owns(&self, v: &Value) -> bool {
        let group = v.get("group").and_then(Value::as_str);
        match self {
            Self::Contact(peer) => {
                group.is_none() && v.get("peer").and_then(Value::as_str) == Some(peer.as_str())
            }
            Self::Group(id) => group == Some(id.as_str()),
        }
    }

    /// The `history` request for it.
    fn history(&self) -> Value {
        match self {
            Self::Contact(peer) => json!({ "peer": peer, "limit": 1000 }),
            Self::Group(id) => json!({ "group": id, "limit": 1000 }),
        }
    }

    /// The request (method, params) that sends `text` here.
    fn send(&self, text: &str) -> (&'static str, Value) {
        match self {
            Self::Contact(peer) => ("send", json!({ "to": peer, "text": text })),
            Self::Group(id) => ("group.send", json!({ "group": id, "text": text })),
        }
    }

    /// The request that marks `ids` read.
    fn read(&self, ids: Value) -> (&'static str, Value) {
        match self {
            Self::Contact(peer) => ("read", json!({ "peer": peer, "ids": ids })),
            Self::Group(id) => ("group.read", json!({ "group": id, "ids": ids })),
        }
    }

    /// The request that says we started or stopped typing.
    fn typing(&self, typing: bool) -> (&'static str, Value) {
        match self {
            Self::Contact(peer) => ("typing", json!({ "to": peer, "typing": typing })),
            Self::Group(id) => ("group.typing", json!({ "group": id, "typing": typing })),
        }
    }
}

/// What the chat window shows.
#[derive(Debug, Default)]
pub(crate) struct ChatState {
    /// The contact's or the group's name.
    pub(crate) name: String,
    /// Whom we talk with.
    pub(crate) conversation: Conversation,
    /// Contact names by peer id (a group's authors).
    pub(crate) names: Names,
    /// The conversation, oldest first (API message objects).
    pub(crate) messages: Vec<Value>,
    /// The contact's presence (`online`, `away`, `offline`), or a group's member count.
    pub(crate) presence: Option<String>,
    /// Who is typing, and until when it shows.
    pub(crate) typing: Option<(String, Instant)>,
    /// The input line.
    pub(crate) input: String,
    /// Lines scrolled up from the bottom.
    pub(crate) scroll: u16,
    /// The last notice (errors, connection state).
    pub(crate) notice: String,
}

/// Whether an attachment event belongs to a message shown in this conversation.
fn for_us_or_ours(state: &ChatState, event: &Value) -> bool {
    let id = event.get("message").and_then(Value::as_str);
    state.messages.iter().any(|m| m.get("id").and_then(Value::as_str) == id)
}

impl ChatState {
    fn upsert(&mut self, message: Value) {
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

    /// Follows an attachment of this conversation: progress, saved path, failure.
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
            "media_progress" if event["direction"] == "receiving" => {
                a.insert("state".into(), json!("downloading"));
                a.insert("size".into(), event["bytes"].clone());
                a.insert("chunks_done".into(), event["chunks_done"].clone());
                a.insert("chunks".into(), event["chunks"].clone());
            }
            "media_saved" => {
                a.insert("state".into(), json!("saved"));
                a.insert("path".into(), event["path"].clone());
            }
            "media_failed" => {
                a.insert("state".into(), json!("failed"));
                a.insert("failure".into(), event["reason"].clone());
            }
            _ => {}
        }
    }

    /// Applies an API event; returns the id of a new incoming message (to mark it read).
    pub(crate) fn apply(&mut self, event: &Value) -> Option<String> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let contact = match &self.conversation {
            Conversation::Contact(peer) => Some(peer.as_str()),
            Conversation::Group(_) => None,
        };
        let from_contact =
            |v: &Value| contact.is_some() && v.get("peer").and_then(Value::as_str) == contact;
        match kind {
            "message" if self.conversation.owns(&event["message"]) => {
                let message = event["message"].clone();
                let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
                if message["direction"] == "incoming" {
                    self.typing = None;
                }
                self.upsert(message);
                return id.filter(|_| event["message"]["direction"] == "incoming");
            }
            "updated" if self.conversation.owns(&event["message"]) => {
                self.upsert(event["message"].clone());
            }
            "status" if self.conversation.owns(event) => {
                let id = event.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
                let status = event.get("status").and_then(Value::as_str).unwrap_or("").to_owned();
                self.set_status(&id, &status, event.get("failure").and_then(Value::as_str));
            }
            "typing" if from_contact(event) => self.set_typing(event, self.name.clone()),
            "group_typing" if self.conversation.owns(event) => {
                let peer = event.get("peer").and_then(Value::as_str).unwrap_or("");
                let who = name_of(&self.names, peer);
                self.set_typing(event, who);
            }
            "presence" if from_contact(event) => {
                self.presence = event.get("status").and_then(Value::as_str).map(str::to_owned);
            }
            "group" => {
                let group = &event["group"];
                if let Conversation::Group(id) = &self.conversation
                    && group.get("id").and_then(Value::as_str) == Some(id.as_str())
                {
                    self.show_group(group);
                }
            }
            "media_progress" | "media_saved" | "media_failed" if for_us_or_ours(self, event) => {
                self.update_attachment(kind, event);
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
                    self.name
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

    /// Shows a group's name, its member count, and whether we are still in it.
    fn show_group(&mut self, group: &Value) {
        if let Some(name) = group.get("name").and_then(Value::as_str) {
            self.name = name.to_owned();
        }
        let members = group["members"].as_array().map_or(0, Vec::len);
        self.presence = Some(format!("{members} members"));
        if group["joined"] == false {
            self.notice = "you are no longer in this group".into();
        }
    }
}

/// Draws the chat window.
pub(crate) fn draw(frame: &mut Frame<'_>, state: &ChatState) {
    let [header, body, input] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(3)])
            .areas(frame.area());
    let mut title = format!(" {} ", state.name);
    if let Some(p) = &state.presence {
        title.push_str(&format!("· {p} "));
    }
    match (&state.typing, &state.conversation) {
        (Some((_, until)), Conversation::Contact(_)) if *until > Instant::now() => {
            title.push_str("· typing… ");
        }
        (Some((who, until)), Conversation::Group(_)) if *until > Instant::now() => {
            title.push_str(&format!("· {who} is typing… "));
        }
        _ => {}
    }
    if !state.notice.is_empty() {
        title.push_str(&format!("· {} ", state.notice));
    }
    let title = single_line(&title).into_owned();
    frame.render_widget(
        Paragraph::new(title).style(Style::default().add_modifier(Modifier::REVERSED)),
        header,
    );

    let lines: Vec<Line<'_>> = state
        .messages
        .iter()
        .map(|m| Line::from(single_line(&message_line(m, &state.name, &state.names)).into_owned()))
        .collect();
    let height = body.height.saturating_sub(2);
    let total = u16::try_from(lines.len()).unwrap_or(u16::MAX);
    let top = total.saturating_sub(height).saturating_sub(state.scroll);
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::default().borders(Borders::ALL))
            .wrap(Wrap { trim: false })
            .scroll((top, 0)),
        body,
    );
    frame.render_widget(
        Paragraph::new(state.input.as_str()).block(
            Block::default().borders(Borders::ALL).title(" message · Enter send · Esc quit "),
        ),
        input,
    );
}

/// Restores the terminal even on error.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Finds what `name` names: a contact (name or peer id) first, else a group (name or id).
async fn find(conn: &mut Conn, name: &str) -> anyhow::Result<ChatState> {
    let contacts = conn.call("contact.list", Value::Null).await?;
    let bare = name.strip_prefix("kith:").unwrap_or(name);
    let contact = contacts.as_array().into_iter().flatten().find(|c| {
        c.get("name").and_then(Value::as_str) == Some(name)
            || c.get("peer_id").and_then(Value::as_str) == Some(bare)
    });
    let mut state = ChatState { names: names(&contacts), ..ChatState::default() };
    if let Some(contact) = contact {
        let peer_id = contact["peer_id"].as_str().unwrap_or_default().to_owned();
        state.name = contact["name"]
            .as_str()
            .or(contact["profile_name"].as_str())
            .unwrap_or(&peer_id)
            .to_owned();
        state.presence = contact["presence"].as_str().map(str::to_owned);
        state.conversation = Conversation::Contact(peer_id);
        return Ok(state);
    }
    let group = match conn.call("group.info", json!({ "group": name })).await {
        Ok(group) => group,
        Err(e) if e.to_string().contains("no group named") => anyhow::bail!(
            "no contact or group named `{name}`; add a contact with `kith contact add`"
        ),
        Err(e) => return Err(e),
    };
    state.conversation = Conversation::Group(group["id"].as_str().unwrap_or_default().to_owned());
    state.show_group(&group);
    Ok(state)
}

/// Sends a request whose answer the chat does not need; a failure shows as the notice.
async fn tell(conn: &mut Conn, state: &mut ChatState, (method, params): (&str, Value)) {
    if let Err(e) = conn.call(method, params).await {
        state.notice = e.to_string();
    }
}

/// Runs the chat with `name` (a contact or a group) until the user quits.
pub(crate) async fn run(mut conn: Conn, name: &str) -> anyhow::Result<()> {
    let mut state = find(&mut conn, name).await?;
    let history = conn.call("history", state.conversation.history()).await?;
    state.messages = history.as_array().cloned().unwrap_or_default();
    if !conn.is_daemon() {
        state.notice = "own node".into();
    }
    let unread: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m["direction"] == "incoming" && m["status"] == "received")
        .map(|m| m["id"].clone())
        .collect();
    if !unread.is_empty() {
        let (method, params) = state.conversation.read(Value::from(unread));
        conn.call(method, params).await?;
    }
    let mut events = conn.events().await?;

    let mut terminal: DefaultTerminal = ratatui::init();
    let _guard = TerminalGuard;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_key: Option<Instant> = None;
    loop {
        terminal.draw(|f| draw(f, &state))?;
        tokio::select! {
            key = keys.next() => {
                let Some(Ok(TermEvent::Key(key))) = key else { continue };
                if key.kind != KeyEventKind::Press { continue }
                match handle_key(&mut state, key) {
                    KeyAction::Quit => break,
                    KeyAction::Send(text) => {
                        last_key = None;
                        let (method, params) = state.conversation.send(&text);
                        match conn.call(method, params).await {
                            Ok(sent) => {
                                if let Some(id) = sent.get("id").and_then(Value::as_str) {
                                    let message = conn.call("message", json!({"id": id})).await?;
                                    state.upsert(message);
                                }
                                state.scroll = 0;
                            }
                            Err(e) => state.notice = e.to_string(),
                        }
                    }
                    KeyAction::Typed => {
                        if last_key.is_none() {
                            let request = state.conversation.typing(true);
                            tell(&mut conn, &mut state, request).await;
                        }
                        last_key = Some(Instant::now());
                    }
                    KeyAction::None => {}
                }
            }
            event = events.recv() => {
                let Some(event) = event else { state.notice = "disconnected from the node".into(); continue };
                if event["type"] == "lagged" {
                    // Events were lost to a backlog: what they announced is stored, so read
                    // the conversation again.
                    match conn.call("history", state.conversation.history()).await {
                        Ok(history) => state.messages = history.as_array().cloned().unwrap_or_default(),
                        Err(e) => state.notice = e.to_string(),
                    }
                    continue;
                }
                if let Some(id) = state.apply(&event) {
                    let request = state.conversation.read(json!([id]));
                    tell(&mut conn, &mut state, request).await;
                }
            }
            _ = tick.tick() => {
                if last_key.is_some_and(|t| t.elapsed() > TYPING_IDLE) {
                    last_key = None;
                    let request = state.conversation.typing(false);
                    tell(&mut conn, &mut state, request).await;
                }
            }
        }
    }
    drop(_guard);
    conn.close().await
}

enum KeyAction {
    Quit,
    Send(String),
    Typed,
    None,
}

fn handle_key(state: &mut ChatState, key: KeyEvent) -> KeyAction {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Esc => KeyAction::Quit,
        KeyCode::Char('c') if ctrl => KeyAction::Quit,
        KeyCode::Char('u') if ctrl => {
            state.input.clear();
            KeyAction::None
        }
        KeyCode::Enter => {
            let text = state.input.trim().to_owned();
            state.input.clear();
            if text.is_empty() { KeyAction::None } else { KeyAction::Send(text) }
        }
        KeyCode::Backspace => {
            state.input.pop();
            KeyAction::None
        }
        KeyCode::PageUp => {
            state.scroll = state.scroll.saturating_add(10);
            KeyAction::None
        }
        KeyCode::PageDown => {
            state.scroll = state.scroll.saturating_sub(10);
            KeyAction::None
        }
        KeyCode::Char(c) => {
            state.input.push(c);
            KeyAction::Typed
        }
        _ => KeyAction::None,
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    fn screen(state: &ChatState) -> String {
        let mut terminal = Terminal::new(TestBackend::new(70, 12)).unwrap();
        terminal.draw(|f| draw(f, state)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn shows_history_marks_typing_presence_and_input() {
        let mut state = ChatState {
            name: "bob".into(),
            conversation: Conversation::Contact("P".into()),
            ..Default::default()
        };
        state.apply(&json!({"type":"message","message":{"id":"1","peer":"P","direction":"incoming","kind":"text","text":"hello","status":"received","stored_at":0}}));
        state.upsert(json!({"id":"2","peer":"P","direction":"outgoing","kind":"text","text":"hi bob","status":"sent","stored_at":0}));
        state.apply(&json!({"type":"status","peer":"P","id":"2","status":"delivered"}));
        state.apply(&json!({"type":"typing","peer":"P","typing":true}));
        state.apply(&json!({"type":"presence","peer":"P","status":"online"}));
        // Events for other conversations are ignored, a group message from the same peer too.
        state.apply(&json!({"type":"message","message":{"id":"3","peer":"Q","direction":"incoming","kind":"text","text":"other","status":"received","stored_at":0}}));
        state.apply(&json!({"type":"message","message":{"id":"5","peer":"P","group":"G","direction":"incoming","kind":"text","text":"in the group","status":"received","stored_at":0}}));
        state.input = "draft".into();
        let shown = screen(&state);
        assert!(shown.contains("bob: hello"), "{shown}");
        assert!(shown.contains("me: hi bob ✓✓"), "{shown}");
        assert!(shown.contains("online") && shown.contains("typing"), "{shown}");
        assert!(shown.contains("draft"), "{shown}");
        assert!(!shown.contains("other") && !shown.contains("in the group"), "{shown}");
        state.apply(&json!({"type":"status","peer":"P","id":"2","status":"read"}));
        state.apply(&json!({"type":"message","message":{"id":"4","peer":"P","direction":"incoming","kind":"media","file_name":"cat.png","status":"received","stored_at":0}}));
        state.apply(&json!({"type":"media_progress","message":"4","direction":"receiving","bytes":2048,"chunks_done":1,"chunks":2}));
        assert!(
            screen(&state).contains("[file cat.png, 2.0 KiB] (downloading 50%)"),
            "{}",
            screen(&state)
        );
        state.apply(&json!({"type":"media_saved","message":"4","path":"/dl/cat.png"}));
        assert!(screen(&state).contains("(saved to /dl/cat.png)"));
        assert!(screen(&state).contains("✓✓ read"));
    }

    #[test]
    fn a_group_chat_shows_authors_who_types_and_member_changes() {
        let mut state = ChatState {
            name: "climbers".into(),
            conversation: Conversation::Group("G".into()),
            names: names(&json!([{"peer_id":"PA","name":"alice"}])),
            ..Default::default()
        };
        state.apply(&json!({"type":"group","group":{"id":"G","name":"climbers","members":["PA","PB","ME"],"admins":["PA"],"joined":true}}));
        let id = state.apply(&json!({"type":"message","message":{"id":"1","peer":"PA","group":"G","direction":"incoming","kind":"text","text":"summit at 6?","status":"received","stored_at":0}}));
        assert_eq!(id.as_deref(), Some("1"), "an incoming group message is marked read");
        state.apply(&json!({"type":"message","message":{"id":"2","peer":"PA","direction":"incoming","kind":"text","text":"just to you","status":"received","stored_at":0}}));
        state.upsert(json!({"id":"3","peer":"ME","group":"G","direction":"outgoing","kind":"text","text":"yes","status":"sent","stored_at":0}));
        state
            .apply(&json!({"type":"status","peer":"ME","group":"G","id":"3","status":"delivered"}));
        state.apply(&json!({"type":"group_typing","group":"G","peer":"PA","typing":true}));
        let shown = screen(&state);
        assert!(shown.contains("alice: summit at 6?"), "{shown}");
        assert!(shown.contains("me: yes ✓✓"), "{shown}");
        assert!(shown.contains("3 members") && shown.contains("alice is typing"), "{shown}");
        assert!(!shown.contains("just to you"), "{shown}");
        state.apply(&json!({"type":"group","group":{"id":"G","name":"crag","members":["PA","PB"],"admins":["PA"],"joined":false}}));
        let shown = screen(&state);
        assert!(shown.contains("crag") && shown.contains("2 members"), "{shown}");
        assert!(shown.contains("no longer in this group"), "{shown}");
    }

    #[test]
    fn keys_edit_send_and_quit() {
        let mut state = ChatState::default();
        let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert!(matches!(handle_key(&mut state, key(KeyCode::Char('h'))), KeyAction::Typed));
        handle_key(&mut state, key(KeyCode::Char('i')));
        assert!(
            matches!(handle_key(&mut state, key(KeyCode::Enter)), KeyAction::Send(t) if t == "hi")
        );
        assert!(state.input.is_empty());
        assert!(matches!(handle_key(&mut state, key(KeyCode::Enter)), KeyAction::None));
        assert!(matches!(
            handle_key(&mut state, KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            KeyAction::Quit
        ));
    }
}
