use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};

use super::state::{Action, ChatState, Conversation, Entry};
use super::view::{draw, wrap};
use super::*;

fn screen_of(state: &mut ChatState, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
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

fn screen(state: &mut ChatState) -> String {
    screen_of(state, 90, 14)
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn entry(conversation: Conversation, name: &str) -> Entry {
    Entry { conversation, name: name.into(), unread: 0, last: 0, pending: false }
}

fn with_bob() -> ChatState {
    ChatState {
        entries: vec![
            entry(Conversation::Contact("P".into()), "bob"),
            entry(Conversation::Group("G".into()), "climbers"),
        ],
        ..ChatState::default()
    }
}

fn text(id: &str, direction: &str, body: &str, at: u64) -> Value {
    json!({"id": id, "peer": "P", "direction": direction, "kind": "text", "text": body,
           "status": if direction == "incoming" { "received" } else { "sent" }, "stored_at": at})
}

#[test]
fn shows_history_marks_typing_presence_and_input() {
    let mut state = with_bob();
    state.apply(&json!({"type":"message","message":text("1","incoming","hello",0)}));
    state.upsert(text("2", "outgoing", "hi bob", 0));
    state.apply(&json!({"type":"status","peer":"P","id":"2","status":"delivered"}));
    state.apply(&json!({"type":"typing","peer":"P","typing":true}));
    state.apply(&json!({"type":"presence","peer":"P","status":"online"}));
    // A group message from the same peer belongs to the group, not to the chat with bob.
    state.apply(&json!({"type":"message","message":{"id":"5","peer":"P","group":"G","direction":"incoming","kind":"text","text":"in the group","status":"received","stored_at":0}}));
    state.input = "draft".into();
    let shown = screen(&mut state);
    assert!(shown.contains("bob: hello"), "{shown}");
    assert!(shown.contains("me: hi bob ✓✓"), "{shown}");
    assert!(shown.contains("online") && shown.contains("typing"), "{shown}");
    assert!(shown.contains("> draft"), "{shown}");
    assert!(!shown.contains("in the group"), "{shown}");
    assert!(shown.contains("#climbers (1)"), "the group's unread message is counted: {shown}");
    state.apply(&json!({"type":"status","peer":"P","id":"2","status":"read"}));
    state.apply(&json!({"type":"message","message":{"id":"4","peer":"P","direction":"incoming","kind":"media","file_name":"cat.png","status":"received","stored_at":0}}));
    state.apply(&json!({"type":"media_progress","message":"4","direction":"receiving","bytes":2048,"chunks_done":1,"chunks":2}));
    assert!(screen(&mut state).contains("[file cat.png, 2.0 KiB] (downloading 50%)"));
    state.apply(&json!({"type":"media_saved","message":"4","path":"/dl/cat.png"}));
    let shown = screen(&mut state);
    assert!(shown.contains("(saved to /dl/cat.png)") && shown.contains("✓✓ read"), "{shown}");
}

#[test]
fn a_stranger_writing_adds_a_request_to_the_list_and_other_chats_count_unread() {
    let mut state = with_bob();
    state.apply(&json!({"type":"message","message":{"id":"9","peer":"S","direction":"incoming","kind":"text","text":"hi?","status":"received","stored_at":50}}));
    state.apply(&json!({"type":"message","message":{"id":"8","peer":"S","direction":"incoming","kind":"text","text":"hello?","status":"received","stored_at":60}}));
    let shown = screen(&mut state);
    assert!(shown.contains("…S? (2)"), "{shown}");
    assert_eq!(state.name(), "bob", "the open conversation stays open");
}

#[test]
fn scrolling_goes_by_rows_so_the_newest_message_is_reachable_after_a_huge_one() {
    let mut state = with_bob();
    state.messages.push(text("1", "incoming", "first", 0));
    state.messages.push(text("2", "incoming", &"x".repeat(60_000), 0));
    state.messages.push(text("3", "incoming", "the newest", 0));
    // 50×14: no list, 11 rows of conversation.
    let shown = screen_of(&mut state, 50, 14);
    assert!(shown.contains("the newest"), "{shown}");
    assert!(!shown.contains("first"), "{shown}");
    // PageUp moves half a page of rows at a time; enough of them reach the first message.
    let pages_of_x = 60_000 / 50 / 5 + 2;
    for _ in 0..pages_of_x {
        state.key(key(KeyCode::PageUp));
        screen_of(&mut state, 50, 14);
    }
    let shown = screen_of(&mut state, 50, 14);
    assert!(shown.contains("first") && !shown.contains("the newest"), "{shown}");
    // PageDown comes back, End goes to the newest at once.
    state.key(key(KeyCode::PageDown));
    assert!(!screen_of(&mut state, 50, 14).contains("first"));
    state.key(key(KeyCode::End));
    assert!(screen_of(&mut state, 50, 14).contains("the newest"));
    // Selecting the first message brings it into view.
    for _ in 0..3 {
        state.key(key(KeyCode::Up));
    }
    assert_eq!(state.selected, Some(0));
    let shown = screen_of(&mut state, 50, 14);
    assert!(shown.contains("first") && shown.contains("replying to: first"), "{shown}");
}

#[test]
fn dates_separate_days_and_replies_quote_what_they_answer() {
    let mut state = with_bob();
    let day = 86_400_000;
    state.messages.push(text("1", "incoming", "see you tomorrow", 1_764_000_000_000));
    let mut reply = text("2", "outgoing", "yes, at 6", 1_764_000_000_000 + day);
    reply["reply_to"] = json!("1");
    state.messages.push(reply);
    let shown = screen(&mut state);
    let dates = shown.lines().filter(|l| l.contains("│── ")).count();
    assert_eq!(dates, 2, "one date line per day: {shown}");
    assert!(
        shown.contains("↳ bob: see you tomorrow") && shown.contains("me: yes, at 6"),
        "{shown}"
    );
    assert_eq!(wrap("abcdef", 4), ["abcd", "ef"]);
    assert_eq!(wrap("日本語", 4), ["日本", "語"], "wide characters take two columns");
}

#[test]
fn keys_edit_the_input_reply_to_a_selection_switch_chats_and_quit() {
    let mut state = with_bob();
    state.messages.push(text("1", "incoming", "question?", 0));
    assert_eq!(state.key(key(KeyCode::Char('h'))), Action::Typed);
    state.key(key(KeyCode::Char('i')));
    state.key(key(KeyCode::Left));
    state.key(key(KeyCode::Char('!')));
    assert_eq!(state.input, "h!i");
    state.key(key(KeyCode::Home));
    state.key(key(KeyCode::Delete));
    assert_eq!(state.input, "!i");
    state.key(key(KeyCode::Up));
    assert_eq!(
        state.key(key(KeyCode::Enter)),
        Action::Send { text: "!i".into(), reply_to: Some("1".into()) }
    );
    assert!(state.input.is_empty() && state.selected.is_none());
    assert_eq!(state.key(key(KeyCode::Enter)), Action::None);
    for c in "/react 👍".chars() {
        state.key(key(KeyCode::Char(c)));
    }
    assert_eq!(state.key(key(KeyCode::Enter)), Action::Command("react 👍".into()));
    assert_eq!(state.key(key(KeyCode::Tab)), Action::Open(1));
    assert_eq!(state.key(key(KeyCode::BackTab)), Action::Open(1));
    state.key(key(KeyCode::Up));
    assert_eq!(state.key(key(KeyCode::Esc)), Action::None, "Esc drops the selection first");
    assert_eq!(state.key(key(KeyCode::Esc)), Action::Quit);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(state.key(ctrl_c), Action::Quit);
}

#[test]
fn search_selects_older_matches_one_after_another() {
    let mut state = with_bob();
    for (i, t) in ["rope at 6", "bring the Rope", "summit"].iter().enumerate() {
        state.messages.push(text(&i.to_string(), "incoming", t, 0));
    }
    state.find("rope");
    assert_eq!(state.selected, Some(1));
    assert!(state.notice.contains("2 in all"), "{}", state.notice);
    state.find("rope");
    assert_eq!(state.selected, Some(0));
    state.find("rope");
    assert_eq!(state.selected, Some(0));
    assert!(state.notice.contains("no older message"), "{}", state.notice);
}

#[test]
fn a_path_may_be_quoted_and_followed_by_a_caption() {
    assert_eq!(split_path("/tmp/a.jpg"), (PathBuf::from("/tmp/a.jpg"), None));
    assert_eq!(
        split_path("/tmp/a.jpg the view"),
        (PathBuf::from("/tmp/a.jpg"), Some("the view".into()))
    );
    assert_eq!(
        split_path("\"/tmp/my photo.jpg\" from the top"),
        (PathBuf::from("/tmp/my photo.jpg"), Some("from the top".into()))
    );
}

#[test]
fn a_group_chat_shows_authors_who_types_and_member_changes() {
    let mut state = with_bob();
    state.current = 1;
    state.names = names(&json!([{"peer_id":"PA","name":"alice"}]));
    state.apply(&json!({"type":"group","group":{"id":"G","name":"climbers","members":["PA","PB","ME"],"admins":["PA"],"joined":true}}));
    let id = state.apply(&json!({"type":"message","message":{"id":"1","peer":"PA","group":"G","direction":"incoming","kind":"text","text":"summit at 6?","status":"received","stored_at":0}}));
    assert_eq!(id.as_deref(), Some("1"), "an incoming message of the open chat is marked read");
    state.upsert(json!({"id":"3","peer":"ME","group":"G","direction":"outgoing","kind":"text","text":"yes","status":"sent","stored_at":0}));
    state.apply(&json!({"type":"status","peer":"ME","group":"G","id":"3","status":"delivered"}));
    state.apply(&json!({"type":"group_typing","group":"G","peer":"PA","typing":true}));
    let shown = screen(&mut state);
    assert!(shown.contains("alice: summit at 6?"), "{shown}");
    assert!(shown.contains("me: yes ✓✓"), "{shown}");
    assert!(shown.contains("3 members") && shown.contains("alice is typing"), "{shown}");
    state.apply(&json!({"type":"group","group":{"id":"G","name":"crag","members":["PA","PB"],"admins":["PA"],"joined":false}}));
    let shown = screen_of(&mut state, 140, 14);
    assert!(shown.contains("crag") && shown.contains("2 members"), "{shown}");
    assert!(shown.contains("no longer in this group"), "{shown}");
}

#[test]
fn a_relay_refusal_shows_on_the_waiting_message() {
    let mut state = with_bob();
    let mut queued = text("7", "outgoing", "a long one", 0);
    queued["status"] = json!("queued");
    state.messages.push(queued);
    state.apply(&json!({"type":"relay_refused","id":"7","relay":"R","reason":"too_large"}));
    let shown = screen_of(&mut state, 140, 14);
    assert!(
        shown.contains(
            "me: a long one … (a relay refused it: too large; it waits for bob to be online)"
        ),
        "{shown}"
    );
}

#[test]
fn messages_forgotten_on_this_device_leave_the_view_and_a_session_reset_is_said() {
    let mut state = with_bob();
    state.apply(&json!({"type":"message","message":text("1","incoming","keep me",0)}));
    state.apply(&json!({"type":"message","message":text("2","incoming","forget me",1)}));
    // Deleted in another conversation: nothing changes here.
    state.apply(&json!({"type":"messages_deleted","peer":"Q","ids":["1"]}));
    state.apply(&json!({"type":"messages_deleted","peer":"P","ids":["2"]}));
    let shown = screen(&mut state);
    assert!(shown.contains("keep me") && !shown.contains("forget me"), "{shown}");
    state.apply(&json!({"type":"session_reset","peer":"P"}));
    assert!(screen(&mut state).contains("started anew"));
}

#[test]
fn the_header_shows_the_timer_its_setting_is_a_line_and_what_disappears_leaves_the_view() {
    let mut state = with_bob();
    assert!(!screen(&mut state).contains('⏱'), "no timer, nothing shown");
    state.apply(&json!({"type":"message","message":{"id":"1","peer":"P","direction":"incoming","kind":"timer","timer_seconds":28800,"status":"received","stored_at":0}}));
    state.apply(&json!({"type":"timer","peer":"P","group":null,"seconds":28800}));
    // Another conversation's timer is not this one's.
    state.apply(&json!({"type":"timer","peer":"ME","group":"G","seconds":60}));
    state.apply(&json!({"type":"message","message":text("2","incoming","gone soon",0)}));
    let shown = screen(&mut state);
    assert!(shown.contains("bob · ⏱ 8h"), "{shown}");
    assert!(shown.contains("bob: ⏱ set disappearing messages to 8h"), "{shown}");
    assert!(shown.contains("gone soon"), "{shown}");
    state.apply(
        &json!({"type":"messages_deleted","peer":"P","group":null,"ids":["2"],"reason":"expired"}),
    );
    let shown = screen(&mut state);
    assert!(!shown.contains("gone soon"), "{shown}");
    state.apply(&json!({"type":"timer","peer":"P","group":null,"seconds":0}));
    assert!(!screen(&mut state).contains("· ⏱"));
}
