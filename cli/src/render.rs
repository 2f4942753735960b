//! Human-readable rendering of messages and statuses (shared by `history` and `chat`).

use chrono::{Local, TimeZone};
use serde_json::Value;

/// The delivery mark of an outgoing status.
pub(crate) fn status_mark(status: &str) -> &'static str {
    match status {
        "queued" => "…",
        "sent" => "✓",
        "delivered" => "✓✓",
        "read" => "✓✓ read",
        "failed" => "✗",
        _ => "",
    }
}

/// Local `HH:MM` of a millisecond timestamp.
pub(crate) fn clock(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Local.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_else(|| "--:--".into())
}

/// One line for a message (as the API returns it): time, who, text, marks, reactions.
pub(crate) fn message_line(m: &Value, peer_name: &str) -> String {
    let get = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
    let outgoing = get("direction") == "outgoing";
    let who = if outgoing { "me" } else { peer_name };
    let body = match get("kind") {
        "deleted" => "(deleted)".to_owned(),
        "media" => format!("[file {}] {}", get("file_name"), get("text")),
        _ => get("text").to_owned(),
    };
    let edited = if m.get("edited_at").is_some_and(|v| !v.is_null()) { " (edited)" } else { "" };
    let mark = if outgoing { status_mark(get("status")) } else { "" };
    let failure =
        m.get("failure").and_then(Value::as_str).map(|f| format!(" ({f})")).unwrap_or_default();
    let reactions: Vec<&str> = m
        .get("reactions")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(|x| x.get("emoji").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    let reactions =
        if reactions.is_empty() { String::new() } else { format!("  [{}]", reactions.join(" ")) };
    let time = clock(m.get("stored_at").and_then(Value::as_u64).unwrap_or(0));
    format!("[{time}] {who}: {body}{edited} {mark}{failure}{reactions}").trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_show_direction_marks_edits_and_reactions() {
        let m = json!({"direction":"outgoing","kind":"text","text":"hi","status":"delivered","stored_at":0,
                       "edited_at":5,"reactions":[{"from":"x","emoji":"👍"}]});
        let line = message_line(&m, "bob");
        assert!(line.contains("me: hi (edited) ✓✓") && line.ends_with("[👍]"), "{line}");
        let m = json!({"direction":"incoming","kind":"deleted","status":"received","stored_at":0});
        assert!(message_line(&m, "bob").contains("bob: (deleted)"));
        let m = json!({"direction":"outgoing","kind":"text","text":"x","status":"failed","failure":"no prekeys","stored_at":0});
        assert!(message_line(&m, "bob").ends_with("✗ (no prekeys)"));
    }
}
