//! `kith chat`: a terminal UI for one conversation: scrolling history with delivery marks, the
//! peer's typing indicator and presence, and an input line.
//!
//! Keys: Enter sends, Esc or Ctrl-C quits, PageUp/PageDown scroll, Ctrl-U clears the input.

use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures::StreamExt;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::{DefaultTerminal, Frame};
use serde_json::{Value, json};

use crate::conn::Conn;
use crate::render::message_line;

/// A peer's typing indicator disappears this long after its last "started".
const TYPING_SHOWN_FOR: Duration = Duration::from_secs(6);
/// We report "stopped typing" after this long without a keystroke.
const TYPING_IDLE: Duration = Duration::from_secs(3);

/// What the chat window shows.
#[derive(Debug, Default)]
pub(crate) struct ChatState {
    /// The peer's display name.
    pub(crate) name: String,
    /// The peer's id.
    pub(crate) peer_id: String,
    /// The conversation, oldest first (API message objects).
    pub(crate) messages: Vec<Value>,
    /// The peer's presence (`online`, `away`, `offline`).
    pub(crate) presence: Option<String>,
    /// Until when the peer shows as typing.
    pub(crate) typing_until: Option<Instant>,
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
        let for_us =
            |v: &Value| v.get("peer").and_then(Value::as_str) == Some(self.peer_id.as_str());
        match kind {
            "message" if for_us(&event["message"]) => {
                let message = event["message"].clone();
                let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
                self.typing_until = None;
                self.upsert(message);
                return id;
            }
            "updated" if for_us(&event["message"]) => self.upsert(event["message"].clone()),
            "status" if for_us(event) => {
                let id = event.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
                let status = event.get("status").and_then(Value::as_str).unwrap_or("").to_owned();
                self.set_status(&id, &status, event.get("failure").and_then(Value::as_str));
            }
            "typing" if for_us(event) => {
                let typing = event.get("typing").and_then(Value::as_bool).unwrap_or(false);
                self.typing_until = typing.then(|| Instant::now() + TYPING_SHOWN_FOR);
            }
            "presence" if for_us(event) => {
                self.presence = event.get("status").and_then(Value::as_str).map(str::to_owned);
            }
            "media_progress" | "media_saved" | "media_failed" if for_us_or_ours(self, event) => {
                self.update_attachment(kind, event);
            }
            "identity_changed" if for_us(event) => {
                self.notice = format!(
                    "{}'s safety number changed: verify it with `kith contact verify`",
                    self.name
                );
            }
            _ => {}
        }
        None
    }
}

/// Draws the chat window.
pub(crate) fn draw(frame: &mut Frame<'_>, state: &ChatState) {
    let [header, body, input] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(3)])
            .areas(frame.area());
    let typing = state.typing_until.is_some_and(|t| t > Instant::now());
    let mut title = format!(" {} ", state.name);
    if let Some(p) = &state.presence {
        title.push_str(&format!("· {p} "));
    }
    if typing {
        title.push_str("· typing… ");
    }
    if !state.notice.is_empty() {
        title.push_str(&format!("· {} ", state.notice));
    }
    frame.render_widget(
        Paragraph::new(title).style(Style::default().add_modifier(Modifier::REVERSED)),
        header,
    );

    let lines: Vec<Line<'_>> =
        state.messages.iter().map(|m| Line::from(message_line(m, &state.name))).collect();
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

/// Runs the chat with `peer` (a contact name or peer id) until the user quits.
pub(crate) async fn run(mut conn: Conn, peer: &str) -> anyhow::Result<()> {
    let contacts = conn.call("contact.list", Value::Null).await?;
    let bare = peer.strip_prefix("kith:").unwrap_or(peer);
    let contact = contacts
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c.get("name").and_then(Value::as_str) == Some(peer)
                || c.get("peer_id").and_then(Value::as_str) == Some(bare)
        })
        .cloned()
        .with_context(|| format!("no contact named `{peer}`; add one with `kith contact add`"))?;
    let peer_id = contact["peer_id"].as_str().unwrap_or_default().to_owned();
    let name = contact["name"]
        .as_str()
        .or(contact["profile_name"].as_str())
        .unwrap_or(&peer_id)
        .to_owned();
    let history = conn.call("history", json!({"peer": peer_id, "limit": 1000})).await?;
    let mut state = ChatState {
        name,
        peer_id: peer_id.clone(),
        messages: history.as_array().cloned().unwrap_or_default(),
        presence: contact["presence"].as_str().map(str::to_owned),
        notice: if conn.is_daemon() { String::new() } else { "own node".into() },
        ..ChatState::default()
    };
    let unread: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m["direction"] == "incoming" && m["status"] == "received")
        .map(|m| m["id"].clone())
        .collect();
    if !unread.is_empty() {
        conn.call("read", json!({"peer": peer_id, "ids": unread})).await?;
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
                        match conn.call("send", json!({"to": peer_id, "text": text})).await {
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
                            let _ = conn.call("typing", json!({"to": peer_id, "typing": true})).await;
                        }
                        last_key = Some(Instant::now());
                    }
                    KeyAction::None => {}
                }
            }
            event = events.recv() => {
                let Some(event) = event else { state.notice = "disconnected from the node".into(); continue };
                if let Some(id) = state.apply(&event) {
                    let _ = conn.call("read", json!({"peer": peer_id, "ids": [id]})).await;
                }
            }
            _ = tick.tick() => {
                if last_key.is_some_and(|t| t.elapsed() > TYPING_IDLE) {
                    last_key = None;
                    let _ = conn.call("typing", json!({"to": peer_id, "typing": false})).await;
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
        let mut state = ChatState { name: "bob".into(), peer_id: "P".into(), ..Default::default() };
        state.apply(&json!({"type":"message","message":{"id":"1","peer":"P","direction":"incoming","kind":"text","text":"hello","status":"received","stored_at":0}}));
        state.upsert(json!({"id":"2","peer":"P","direction":"outgoing","kind":"text","text":"hi bob","status":"sent","stored_at":0}));
        state.apply(&json!({"type":"status","peer":"P","id":"2","status":"delivered"}));
        state.apply(&json!({"type":"typing","peer":"P","typing":true}));
        state.apply(&json!({"type":"presence","peer":"P","status":"online"}));
        // Events for other conversations are ignored.
        state.apply(&json!({"type":"message","message":{"id":"3","peer":"Q","direction":"incoming","kind":"text","text":"other","status":"received","stored_at":0}}));
        state.input = "draft".into();
        let shown = screen(&state);
        assert!(shown.contains("bob: hello"), "{shown}");
        assert!(shown.contains("me: hi bob ✓✓"), "{shown}");
        assert!(shown.contains("online") && shown.contains("typing"), "{shown}");
        assert!(shown.contains("draft"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
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
