//! Drawing the chat window: the conversation list, the open conversation laid out in screen
//! rows (so scrolling moves by rows whatever the length of a message), the input line.

use std::time::Instant;

use chrono::{Local, TimeZone};
use kith_node::kith_core::text::single_line;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};
use serde_json::Value;
use unicode_width::UnicodeWidthChar;

use super::state::{ChatState, Conversation, Link};
use crate::render::{message_line, name_of};

/// Width of the conversation list, when the terminal is wide enough to show it.
const LIST_WIDTH: u16 = 22;
/// The list is shown from this terminal width on.
const LIST_FROM: u16 = 60;

/// The keys, shown under the input.
const HELP: &str =
    "Enter send · ↑↓ select (reply by sending) · Tab next chat · PgUp/PgDn · /help · Esc";

/// One screen row of the conversation: its text and the message it belongs to (`None` for a
/// date line).
pub(crate) struct Row {
    pub(crate) text: String,
    pub(crate) message: Option<usize>,
}

/// Splits `text` into rows of at most `width` columns (wide characters count two).
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            rows.push(std::mem::take(&mut row));
            used = 0;
        }
        row.push(c);
        used += w;
    }
    rows.push(row);
    rows
}

/// A day as a date line shows it: `Wed 2 Dec 2026`.
fn day(ms: u64) -> Option<(String, chrono::NaiveDate)> {
    let time = Local.timestamp_millis_opt(i64::try_from(ms).ok()?).single()?;
    Some((time.format("%a %-d %b %Y").to_string(), time.date_naive()))
}

/// The open conversation as screen rows `width` wide: a date line where the day changes, a
/// quote line above a reply, each message wrapped.
pub(crate) fn rows(state: &ChatState, width: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut last_day = None;
    for (i, m) in state.messages.iter().enumerate() {
        if let Some((label, date)) = day(m["stored_at"].as_u64().unwrap_or(0))
            && last_day != Some(date)
        {
            last_day = Some(date);
            rows.push(Row { text: format!("── {label} ──"), message: None });
        }
        if let Some(target) = m["reply_to"].as_str() {
            let quoted = state.messages.iter().find(|q| q["id"] == target);
            let quote = match quoted {
                Some(q) => {
                    let who = match (q["direction"] == "outgoing", state.conversation()) {
                        (true, _) => "me".to_owned(),
                        (false, Some(Conversation::Contact(_))) => state.name().to_owned(),
                        (false, _) => name_of(&state.names, q["peer"].as_str().unwrap_or("")),
                    };
                    let text: String =
                        q["text"].as_str().unwrap_or("[file]").chars().take(60).collect();
                    format!("  ↳ {who}: {text}")
                }
                None => "  ↳ (an earlier message)".to_owned(),
            };
            for text in wrap(&single_line(&quote), width) {
                rows.push(Row { text, message: Some(i) });
            }
        }
        let line = single_line(&message_line(m, state.name(), &state.names)).into_owned();
        for text in wrap(&line, width) {
            rows.push(Row { text, message: Some(i) });
        }
    }
    rows
}

/// The first row to show of `total` in `height` rows, `scroll` rows up from the newest, and
/// the scroll clamped to what exists; a selected message is brought into view.
fn window(rows: &[Row], height: usize, state: &mut ChatState) -> usize {
    let total = rows.len();
    let max_scroll = total.saturating_sub(height);
    if let Some(selected) = state.selected.filter(|_| std::mem::take(&mut state.follow)) {
        let first = rows.iter().position(|r| r.message == Some(selected));
        let last = rows.iter().rposition(|r| r.message == Some(selected));
        if let (Some(first), Some(last)) = (first, last) {
            let top = total.saturating_sub(height).saturating_sub(state.scroll);
            if first < top {
                state.scroll = total.saturating_sub(height).saturating_sub(first);
            } else if last >= top + height {
                state.scroll = (total.saturating_sub(height))
                    .saturating_sub((last + 1).saturating_sub(height));
            }
        }
    }
    state.scroll = state.scroll.min(max_scroll);
    total.saturating_sub(height).saturating_sub(state.scroll)
}

/// Draws the chat window.
pub(crate) fn draw(frame: &mut Frame<'_>, state: &mut ChatState) {
    let area = frame.area();
    let (list, main) = if area.width >= LIST_FROM {
        let [list, main] =
            Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(20)]).areas(area);
        (Some(list), main)
    } else {
        (None, area)
    };
    if let Some(list) = list {
        draw_list(frame, state, list);
    }
    let [header, body, input, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(if state.selected.is_some() { 2 } else { 1 }),
        Constraint::Length(1),
    ])
    .areas(main);

    // Header: name, presence or size, typing, link, notice.
    let mut title = format!(" {} ", state.name());
    if let Some(p) = &state.presence {
        title.push_str(&format!("· {p} "));
    }
    if state.timer > 0 {
        title.push_str(&format!("· ⏱ {} ", crate::render::timer_words(state.timer)));
    }
    match (&state.typing, state.conversation()) {
        (Some((_, until)), Some(Conversation::Contact(_))) if *until > Instant::now() => {
            title.push_str("· typing… ");
        }
        (Some((who, until)), Some(Conversation::Group(_))) if *until > Instant::now() => {
            title.push_str(&format!("· {who} is typing… "));
        }
        _ => {}
    }
    match state.link {
        Link::Lost => title.push_str("· daemon gone, reconnecting… "),
        Link::Own => title.push_str("· own node "),
        Link::Daemon => {}
    }
    if !state.notice.is_empty() {
        title.push_str(&format!("· {} ", state.notice));
    }
    frame.render_widget(
        Paragraph::new(single_line(&title).into_owned())
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        header,
    );

    // The conversation, by rows.
    let width = usize::from(body.width);
    let height = usize::from(body.height);
    state.page = height;
    let rows = rows(state, width);
    let top = window(&rows, height, state);
    let lines: Vec<Line<'_>> = rows
        .iter()
        .skip(top)
        .take(height)
        .map(|r| {
            let line = Line::from(r.text.clone());
            if r.message.is_some() && r.message == state.selected {
                line.style(Style::default().add_modifier(Modifier::REVERSED))
            } else if r.message.is_none() {
                line.style(Style::default().add_modifier(Modifier::DIM))
            } else {
                line
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), body);

    // The input: what a send does with the selection above it.
    let mut input_lines = Vec::new();
    if let Some(m) = state.selected_message() {
        let text: String = m["text"].as_str().unwrap_or("[file]").chars().take(50).collect();
        input_lines.push(
            Line::from(single_line(&format!("replying to: {text}  (Esc: cancel)")).into_owned())
                .style(Style::default().add_modifier(Modifier::DIM)),
        );
    }
    let prompt = "> ";
    let shown = input_view(
        &state.input,
        state.cursor,
        usize::from(input.width).saturating_sub(prompt.len()),
    );
    input_lines.push(Line::from(format!("{prompt}{}", shown.0)));
    frame.render_widget(Paragraph::new(input_lines), input);
    let x = input.x + u16::try_from(prompt.len() + shown.1).unwrap_or(0);
    let y = input.y + input.height.saturating_sub(1);
    frame.set_cursor_position(Position::new(x.min(input.right().saturating_sub(1)), y));
    frame.render_widget(
        Paragraph::new(HELP).style(Style::default().add_modifier(Modifier::DIM)),
        help,
    );
}

/// The part of the input that fits `width` columns around the cursor, and the cursor's column
/// in it.
fn input_view(input: &str, cursor: usize, width: usize) -> (String, usize) {
    let chars: Vec<char> = single_line(input).chars().collect();
    let width = width.max(1);
    let start = cursor.saturating_sub(width.saturating_sub(1));
    let shown: String = chars.iter().skip(start).take(width).collect();
    let column =
        chars.iter().skip(start).take(cursor - start).map(|c| c.width().unwrap_or(0)).sum();
    (shown, column)
}

/// The conversation list: name, unread count, a mark for requests and invitations.
fn draw_list(frame: &mut Frame<'_>, state: &ChatState, area: ratatui::layout::Rect) {
    let inner = usize::from(area.width.saturating_sub(2));
    let lines: Vec<Line<'_>> = state
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mark = if e.pending { "?" } else { "" };
            let unread = if e.unread > 0 { format!(" ({})", e.unread) } else { String::new() };
            let group = if matches!(e.conversation, Conversation::Group(_)) { "#" } else { "" };
            let room = inner.saturating_sub(unread.chars().count() + mark.len() + group.len());
            let name: String = single_line(&e.name).chars().take(room).collect();
            let line = Line::from(format!("{group}{name}{mark}{unread}"));
            if i == state.current {
                line.style(Style::default().add_modifier(Modifier::REVERSED))
            } else if e.unread > 0 {
                line.style(Style::default().add_modifier(Modifier::BOLD))
            } else {
                line
            }
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::RIGHT).title(" chats ")),
        area,
    );
}

/// Whether `message` is ours (edits and deletions need that).
pub(crate) fn is_ours(message: &Value) -> bool {
    message["direction"] == "outgoing"
}
