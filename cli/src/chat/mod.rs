//! `kith chat`: a terminal client. A list of conversations (contacts, message requests,
//! groups) with unread counts beside the open one; the open conversation scrolls by screen
//! rows, with date lines, quoted replies, reactions, edits, attachments and their progress;
//! an input line that survives the daemon going away (the chat reconnects on its own).
//!
//! Keys: Enter sends (as a reply when a message is selected), ↑/↓ select a message, Esc
//! cancels the selection (quits when there is none), PageUp/PageDown scroll, End goes to the
//! newest, Tab/Shift-Tab (Ctrl-N/Ctrl-P) switch conversations, ←/→/Home/End/Backspace/Delete
//! edit, Ctrl-U clears the input, Ctrl-C or Ctrl-Q quits. Commands: `/react EMOJI`,
//! `/unreact EMOJI`, `/edit TEXT`, `/delete` (on the selected message), `/file PATH [caption]`,
//! `/search TEXT` (again: older), `/open` (where a file is), `/accept`, `/decline`, `/block`,
//! `/help`.

mod state;
mod view;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures::StreamExt;
use ratatui::DefaultTerminal;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub(crate) use state::{Action, ChatState, Conversation, Entry, Link};

use crate::conn::{Conn, NetArgs};
use crate::render::names;

/// We report "stopped typing" after this long without a keystroke.
const TYPING_IDLE: Duration = Duration::from_secs(3);
/// How often a lost daemon is looked for, and the typing state checked.
const TICK: Duration = Duration::from_millis(500);
/// How long one attempt to reconnect may take.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/help` shows.
const COMMANDS: &str = "/react 👍 · /unreact 👍 · /edit TEXT · /delete · /file PATH [caption] · /search TEXT · /open · /disappear 1d|off · /accept · /decline · /block";

/// Restores the terminal even on error.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The conversation list: contacts we named, strangers' requests, groups we are in; with
/// unread counts and last activity from each history.
async fn load_entries(conn: &mut Conn, state: &mut ChatState) -> anyhow::Result<()> {
    let contacts = conn.call("contact.list", Value::Null).await?;
    state.names = names(&contacts);
    let mut entries = Vec::new();
    for c in contacts.as_array().into_iter().flatten() {
        let request = c["request"] == true;
        if (c["name"].is_null() && !request) || c["blocked"] == true {
            continue;
        }
        let peer = c["peer_id"].as_str().unwrap_or_default().to_owned();
        let name = crate::render::name_of(&state.names, &peer);
        entries.push(Entry {
            conversation: Conversation::Contact(peer),
            name,
            unread: 0,
            last: 0,
            pending: request,
        });
    }
    let groups = conn.call("group.list", Value::Null).await?;
    for g in groups.as_array().into_iter().flatten().filter(|g| g["joined"] == true) {
        entries.push(Entry {
            conversation: Conversation::Group(g["id"].as_str().unwrap_or_default().to_owned()),
            name: g["name"].as_str().unwrap_or_default().to_owned(),
            unread: 0,
            last: 0,
            pending: g["invited_by"].is_string(),
        });
    }
    for entry in &mut entries {
        let history = conn.call("history", entry.conversation.history()).await?;
        let messages = history.as_array().cloned().unwrap_or_default();
        entry.unread = messages
            .iter()
            .filter(|m| m["direction"] == "incoming" && m["status"] == "received")
            .count();
        entry.last = messages.last().and_then(|m| m["stored_at"].as_u64()).unwrap_or(0);
    }
    let open = state.conversation().cloned();
    state.entries = entries;
    state.sort_entries();
    if let Some(open) = open {
        state.current = state.entries.iter().position(|e| e.conversation == open).unwrap_or(0);
    }
    Ok(())
}

/// Finds what `name` names among the entries: a contact (name or peer id), else a group (name
/// or id, or an id prefix).
async fn find(conn: &mut Conn, state: &ChatState, name: &str) -> anyhow::Result<usize> {
    let bare = name.strip_prefix("kith:").unwrap_or(name);
    let by_contact = state.entries.iter().position(|e| match &e.conversation {
        Conversation::Contact(peer) => peer == bare || e.name == name,
        Conversation::Group(_) => false,
    });
    if let Some(i) = by_contact {
        return Ok(i);
    }
    let group = match conn.call("group.info", json!({ "group": name })).await {
        Ok(group) => group,
        Err(e) if e.to_string().contains("no group named") => anyhow::bail!(
            "no contact or group named `{name}`; add a contact with `kith contact add`"
        ),
        Err(e) => return Err(e),
    };
    let id = group["id"].as_str().unwrap_or_default();
    state
        .entries
        .iter()
        .position(|e| e.conversation == Conversation::Group(id.to_owned()))
        .ok_or_else(|| anyhow::anyhow!("you are no longer in the group `{name}`"))
}

/// Opens entry `index`: its history, marked read; its header.
async fn open(conn: &mut Conn, state: &mut ChatState, index: usize) -> anyhow::Result<()> {
    let Some(entry) = state.entries.get(index).cloned() else { return Ok(()) };
    state.current = index;
    state.selected = None;
    state.scroll = 0;
    state.typing = None;
    state.notice.clear();
    state.presence = None;
    state.timer = 0;
    let history = conn.call("history", entry.conversation.history()).await?;
    state.messages = history.as_array().cloned().unwrap_or_default();
    match &entry.conversation {
        Conversation::Contact(peer) => {
            let contacts = conn.call("contact.list", Value::Null).await?;
            let contact = contacts.as_array().into_iter().flatten().find(|c| c["peer_id"] == *peer);
            state.presence = contact.and_then(|c| c["presence"].as_str()).map(str::to_owned);
            if entry.pending {
                state.notice =
                    "a message request: /accept NAME to add them, /block to refuse them".into();
            }
        }
        Conversation::Group(id) => {
            let group = conn.call("group.info", json!({ "group": id })).await?;
            state.show_group(&group);
        }
    }
    let (_, params) = entry.conversation.request("disappear", "peer", json!({}));
    state.timer = conn.call("disappear", params).await?["seconds"].as_u64().unwrap_or(0);
    mark_read(conn, state).await;
    Ok(())
}

/// Marks the open conversation's unread incoming messages read.
async fn mark_read(conn: &mut Conn, state: &mut ChatState) {
    let unread: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m["direction"] == "incoming" && m["status"] == "received")
        .map(|m| m["id"].clone())
        .collect();
    if let Some(entry) = state.entries.get_mut(state.current) {
        entry.unread = 0;
    }
    if unread.is_empty() {
        return;
    }
    let Some(conversation) = state.conversation().cloned() else { return };
    let (method, params) = conversation.request("read", "peer", json!({ "ids": unread }));
    tell(conn, state, &method, params).await;
}

/// Sends a request whose answer the chat does not need; a failure shows as the notice.
async fn tell(
    conn: &mut Conn,
    state: &mut ChatState,
    method: &str,
    params: Value,
) -> Option<Value> {
    match conn.call(method, params).await {
        Ok(value) => Some(value),
        Err(e) => {
            state.notice = e.to_string();
            None
        }
    }
}

/// Shows our new message `answer` names (by its id) at once.
async fn show_sent(conn: &mut Conn, state: &mut ChatState, answer: Option<Value>) {
    let Some(id) = answer.as_ref().and_then(|a| a["id"].as_str()) else { return };
    if let Ok(message) = conn.call("message", json!({ "id": id })).await
        && !message.is_null()
    {
        state.upsert(message);
        state.scroll = 0;
    }
}

/// Runs a `/command` typed in the input.
async fn command(conn: &mut Conn, state: &mut ChatState, line: &str) -> anyhow::Result<()> {
    let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let Some(conversation) = state.conversation().cloned() else {
        state.notice = "no conversation open".into();
        return Ok(());
    };
    let target = state.selected_message().and_then(|m| m["id"].as_str()).map(str::to_owned);
    let ours = state.selected_message().is_some_and(view::is_ours);
    let need_target = |state: &mut ChatState| -> Option<String> {
        if target.is_none() {
            state.notice = format!("/{name}: select a message first (↑)");
        }
        target.clone()
    };
    match name {
        "help" => state.notice = COMMANDS.to_owned(),
        "react" | "unreact" if rest.is_empty() => state.notice = format!("/{name} EMOJI"),
        "react" | "unreact" => {
            let Some(target) = need_target(state) else { return Ok(()) };
            let params = json!({ "target": target, "emoji": rest, "remove": name == "unreact" });
            let (method, params) = conversation.request("react", "to", params);
            if tell(conn, state, &method, params).await.is_some() {
                state.selected = None;
            }
        }
        "edit" | "delete" => {
            let Some(target) = need_target(state) else { return Ok(()) };
            if !ours {
                state.notice = format!("/{name}: only your own messages");
                return Ok(());
            }
            if name == "edit" && rest.is_empty() {
                state.notice = "/edit NEW TEXT".into();
                return Ok(());
            }
            let params = if name == "edit" {
                json!({ "target": target, "text": rest })
            } else {
                json!({ "target": target })
            };
            let (method, params) = conversation.request(name, "to", params);
            if tell(conn, state, &method, params).await.is_some() {
                state.selected = None;
            }
        }
        "file" => send_file(conn, state, &conversation, rest).await,
        "search" => match (rest, state.search.clone()) {
            ("", Some(term)) => state.find(&term),
            ("", None) => state.notice = "/search TEXT".into(),
            (term, _) => {
                state.selected = None;
                state.find(term);
            }
        },
        "open" => {
            let Some(m) = state.selected_message() else {
                state.notice = "/open: select a file first (↑)".into();
                return Ok(());
            };
            state.notice = match m["attachment"]["path"].as_str() {
                Some(path) => format!("file: {path}"),
                None => "no file here yet".into(),
            };
        }
        "accept" | "decline" | "block" => answer(conn, state, &conversation, name, rest).await?,
        "disappear" => match crate::render::parse_timer(rest) {
            Ok(seconds) => {
                let (_, params) =
                    conversation.request("disappear", "peer", json!({ "seconds": seconds }));
                if let Some(answer) = tell(conn, state, "disappear", params).await {
                    state.timer = answer["seconds"].as_u64().unwrap_or(0);
                    show_sent(conn, state, Some(answer)).await;
                }
            }
            Err(e) => state.notice = format!("/disappear off|1w|1d|8h|30m|45s: {e}"),
        },
        _ => state.notice = format!("unknown command /{name}: {COMMANDS}"),
    }
    Ok(())
}

/// `/file PATH [caption]`: sends a file here (its progress shows on the message).
async fn send_file(
    conn: &mut Conn,
    state: &mut ChatState,
    conversation: &Conversation,
    rest: &str,
) {
    let (path, caption) = split_path(rest);
    if path.as_os_str().is_empty() {
        state.notice = "/file PATH [caption]".into();
        return;
    }
    let path = match std::fs::canonicalize(&path) {
        Ok(path) => path,
        Err(e) => {
            state.notice = format!("cannot read {}: {e}", path.display());
            return;
        }
    };
    let (method, params) =
        conversation.request("send_file", "to", json!({ "path": path, "caption": caption }));
    let answer = tell(conn, state, &method, params).await;
    show_sent(conn, state, answer).await;
}

/// A path (quoted if it holds spaces) and what follows it.
fn split_path(rest: &str) -> (PathBuf, Option<String>) {
    let rest = rest.trim();
    let (path, caption) = match rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
        Some((path, caption)) => (path, caption),
        None => rest.split_once(' ').unwrap_or((rest, "")),
    };
    let caption = caption.trim();
    let path = match path.strip_prefix("~/") {
        Some(home) => dirs::home_dir().map_or_else(|| PathBuf::from(path), |h| h.join(home)),
        None => PathBuf::from(path),
    };
    (path, (!caption.is_empty()).then(|| caption.to_owned()))
}

/// `/accept [NAME]`, `/decline`, `/block`: answers a message request or a group invitation.
async fn answer(
    conn: &mut Conn,
    state: &mut ChatState,
    conversation: &Conversation,
    what: &str,
    rest: &str,
) -> anyhow::Result<()> {
    let done = match (conversation, what) {
        (Conversation::Contact(peer), "accept") => {
            if rest.is_empty() {
                state.notice = "/accept NAME: the name to know them by".into();
                return Ok(());
            }
            let params = json!({ "contact": format!("kith:{peer}"), "name": rest });
            tell(conn, state, "contact.add", params).await
        }
        (Conversation::Contact(peer), "block") => {
            tell(conn, state, "contact.block", json!({ "contact": peer, "blocked": true })).await
        }
        (Conversation::Group(id), "accept" | "decline") => {
            tell(conn, state, &format!("group.{what}"), json!({ "group": id })).await
        }
        _ => {
            state.notice = format!("/{what} does not apply here");
            return Ok(());
        }
    };
    if done.is_some() {
        load_entries(conn, state).await?;
        state.notice = format!("done: /{what}");
    }
    Ok(())
}

/// Runs the chat (opened on `name`, else on the most recent conversation) until the user quits.
pub(crate) async fn run(data_dir: &Path, net: &NetArgs, name: Option<&str>) -> anyhow::Result<()> {
    let mut conn = Conn::open(data_dir, Some(net)).await?;
    let mut state = ChatState {
        link: if conn.is_daemon() { Link::Daemon } else { Link::Own },
        ..ChatState::default()
    };
    load_entries(&mut conn, &mut state).await?;
    let index = match name {
        Some(name) => find(&mut conn, &state, name).await?,
        None => 0,
    };
    open(&mut conn, &mut state, index).await?;
    let mut events = Some(conn.events().await?);

    let mut terminal: DefaultTerminal = ratatui::init();
    let guard = TerminalGuard;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_key: Option<Instant> = None;
    loop {
        terminal.draw(|f| view::draw(f, &mut state))?;
        let next_event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                // Nothing to wait for until the daemon is back: the tick looks for it.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            key = keys.next() => {
                let key = match key {
                    Some(Ok(TermEvent::Key(key))) if key.kind == KeyEventKind::Press => key,
                    Some(Ok(_)) => continue, // a resize redraws at the top of the loop
                    Some(Err(_)) | None => break,
                };
                let action = state.key(key);
                if state.link == Link::Lost && !matches!(action, Action::Quit | Action::Typed | Action::None) {
                    // Kept for when the daemon is back: nothing typed is lost.
                    if let Action::Send { text, .. } | Action::Command(text) = &action {
                        state.input = if matches!(action, Action::Command(_)) { format!("/{text}") } else { text.clone() };
                        state.cursor = state.input.chars().count();
                    }
                    state.notice = "not connected to the daemon: your text is kept".into();
                    continue;
                }
                match action {
                    Action::Quit => break,
                    Action::Send { text, reply_to } => {
                        last_key = None;
                        let Some(conversation) = state.conversation().cloned() else { continue };
                        let (method, params) = conversation.request("send", "to", json!({ "text": text, "reply_to": reply_to }));
                        let answer = tell(&mut conn, &mut state, &method, params).await;
                        if answer.is_none() {
                            // Refused: give the text back to edit.
                            state.input = text;
                            state.cursor = state.input.chars().count();
                        }
                        show_sent(&mut conn, &mut state, answer).await;
                    }
                    Action::Command(line) => {
                        // A command that fails says why; the chat goes on.
                        if let Err(e) = command(&mut conn, &mut state, &line).await {
                            state.notice = e.to_string();
                        }
                    }
                    Action::Open(index) => {
                        if let Err(e) = open(&mut conn, &mut state, index).await {
                            state.notice = e.to_string();
                        }
                    }
                    Action::Typed => {
                        if last_key.is_none()
                            && state.link != Link::Lost
                            && let Some(conversation) = state.conversation().cloned()
                        {
                            let (method, params) = conversation.request("typing", "to", json!({ "typing": true }));
                            tell(&mut conn, &mut state, &method, params).await;
                        }
                        last_key = Some(Instant::now());
                    }
                    Action::None => {}
                }
            }
            event = next_event => {
                let Some(event) = event else {
                    events = None;
                    state.link = Link::Lost;
                    continue;
                };
                if event["type"] == "lagged" {
                    // Events were lost to a backlog: what they announced is stored.
                    let current = state.current;
                    if let Err(e) = load_entries(&mut conn, &mut state).await {
                        state.notice = e.to_string();
                    }
                    let _ = open(&mut conn, &mut state, current).await;
                    continue;
                }
                if state.apply(&event).is_some() {
                    mark_read(&mut conn, &mut state).await;
                }
            }
            _ = tick.tick() => {
                if state.link == Link::Lost {
                    reconnect(data_dir, &mut conn, &mut state, &mut events).await;
                    continue;
                }
                if last_key.is_some_and(|t| t.elapsed() > TYPING_IDLE) {
                    last_key = None;
                    if let Some(conversation) = state.conversation().cloned() {
                        let (method, params) = conversation.request("typing", "to", json!({ "typing": false }));
                        tell(&mut conn, &mut state, &method, params).await;
                    }
                }
            }
        }
    }
    drop(guard);
    conn.close().await
}

/// Tries once to reach the daemon again (for at most [`RECONNECT_TIMEOUT`]: a daemon that is
/// still stopping may accept and never answer); on success, re-reads what may have changed.
async fn reconnect(
    data_dir: &Path,
    conn: &mut Conn,
    state: &mut ChatState,
    events: &mut Option<mpsc::Receiver<Value>>,
) {
    let attempt = async {
        let client = kith_node::rpc::RpcClient::connect(data_dir).await?;
        let fresh = Conn::Daemon { client, data_dir: data_dir.to_owned() };
        let subscription = fresh.events().await?;
        anyhow::Ok((fresh, subscription))
    };
    match tokio::time::timeout(RECONNECT_TIMEOUT, attempt).await {
        Ok(Ok((fresh, subscription))) => {
            *conn = fresh;
            *events = Some(subscription);
        }
        Ok(Err(e)) => {
            tracing::debug!("reconnecting: {e}");
            return;
        }
        Err(_) => return,
    }
    state.link = Link::Daemon;
    let current = state.current;
    let selected = state.selected;
    let reread = async {
        load_entries(conn, state).await?;
        open(conn, state, current).await
    };
    match tokio::time::timeout(RECONNECT_TIMEOUT, reread).await {
        Ok(Ok(())) => {
            state.selected = selected.filter(|i| *i < state.messages.len());
            state.notice = "reconnected".into();
        }
        Ok(Err(e)) => state.notice = format!("reconnected, but: {e}"),
        Err(_) => {
            state.link = Link::Lost;
            *events = None;
        }
    }
}

#[cfg(test)]
mod tests;
