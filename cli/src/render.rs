//! Human-readable rendering of messages and statuses (shared by `history` and `chat`).

use std::collections::HashMap;

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

/// Bytes as a short human size (`812 B`, `4.2 MiB`).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).unwrap_or(&"TiB"))
}

/// An attachment message: `[file NAME, SIZE] caption (where it stands)`.
fn attachment_text(m: &Value) -> String {
    let a = &m["attachment"];
    let name = m["file_name"].as_str().unwrap_or("attachment");
    let size = a["size"].as_u64().map(|s| format!(", {}", human_size(s))).unwrap_or_default();
    let caption = m["text"].as_str().map(|c| format!(" {c}")).unwrap_or_default();
    let state = match a["state"].as_str() {
        Some("saved") => format!(" (saved to {})", a["path"].as_str().unwrap_or("?")),
        Some("downloading") => {
            let (done, all) = (a["chunks_done"].as_u64().unwrap_or(0), a["chunks"].as_u64());
            let percent = all.filter(|n| *n > 0).map_or(0, |n| done * 100 / n);
            format!(" (downloading {percent}%)")
        }
        Some("failed") => format!(" (failed: {})", a["failure"].as_str().unwrap_or("?")),
        Some("sent") => match a["relays"].as_u64() {
            Some(n) if n > 0 => {
                format!(" (from {}, on {n} relay(s))", a["path"].as_str().unwrap_or("?"))
            }
            _ => format!(" (from {})", a["path"].as_str().unwrap_or("?")),
        },
        _ => String::new(),
    };
    match a["image"]
        .as_array()
        .map(|d| (d.first().and_then(Value::as_u64), d.get(1).and_then(Value::as_u64)))
    {
        Some((Some(w), Some(h))) => format!("[image {w}×{h}] {name}{size}{caption}{state}"),
        _ => format!("[file {name}{size}]{caption}{state}"),
    }
}

/// Contact names by peer id, to name the authors of group messages.
pub(crate) type Names = HashMap<String, String>;

/// Contact names by peer id, from a `contact.list` answer: ours, else theirs as `~name`.
pub(crate) fn names(contacts: &Value) -> Names {
    contacts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let peer = c.get("peer_id").and_then(Value::as_str)?;
            // Our name for them; else the name they chose, marked as theirs (anyone can
            // choose any name, so it must not pass for one of ours).
            let name = match (c.get("name").and_then(Value::as_str), c["profile_name"].as_str()) {
                (Some(ours), _) => ours.to_owned(),
                (None, Some(theirs)) => format!("~{theirs}"),
                (None, None) => return None,
            };
            Some((peer.to_owned(), name))
        })
        .collect()
}

/// What to call `peer`: its contact name, else the end of its peer id.
pub(crate) fn name_of(names: &Names, peer: &str) -> String {
    names
        .get(peer)
        .cloned()
        .unwrap_or_else(|| format!("…{}", peer.get(peer.len().saturating_sub(8)..).unwrap_or(peer)))
}

/// A disappearing-message timer in words: `off`, or its largest whole unit (`1w`, `36h`,
/// `90m`, `30s`).
pub(crate) fn timer_words(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(604_800, "w"), (86_400, "d"), (3_600, "h"), (60, "m")];
    if seconds == 0 {
        return "off".to_owned();
    }
    UNITS
        .iter()
        .find(|(unit, _)| seconds.is_multiple_of(*unit))
        .map_or_else(|| format!("{seconds}s"), |(unit, name)| format!("{}{name}", seconds / unit))
}

/// Parses a disappearing-message timer: `off` (or `0`), or a duration like `1w`, `1d`,
/// `8h`, `30m` or `45s`, at most a year.
pub(crate) fn parse_timer(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if text == "off" || text == "0" {
        return Ok(0);
    }
    let (number, weeks) = match text.strip_suffix('w') {
        Some(n) => (format!("{n}d"), 7),
        None => (text.to_owned(), 1),
    };
    let duration = crate::relay::parse_duration(&number).map_err(|_| {
        format!("`{text}`: expected off, or a duration like 1w, 1d, 8h, 30m or 45s")
    })?;
    let max = kith_node::kith_protocol::limits::MAX_EXPIRE_SECONDS;
    duration
        .as_secs()
        .checked_mul(weeks)
        .and_then(|s| u32::try_from(s).ok())
        .filter(|s| *s <= max)
        .ok_or_else(|| format!("`{text}`: disappearing messages last at most a year"))
}

/// One line for a message (as the API returns it): time, who, text, marks, reactions.
/// `peer_name` names the other side of a conversation; in a group, the author is named from
/// `names`, or shown as the end of its peer id.
pub(crate) fn message_line(m: &Value, peer_name: &str, names: &Names) -> String {
    let get = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
    let outgoing = get("direction") == "outgoing";
    let author;
    let who = if outgoing {
        "me"
    } else if m.get("group").is_some_and(Value::is_string) {
        author = name_of(names, get("peer"));
        &author
    } else {
        peer_name
    };
    let body = match get("kind") {
        "deleted" => "(deleted)".to_owned(),
        "media" => attachment_text(m),
        "timer" => {
            let seconds = m.get("timer_seconds").and_then(Value::as_u64).unwrap_or(0);
            match seconds {
                0 => "⏱ turned disappearing messages off".to_owned(),
                s => format!("⏱ set disappearing messages to {}", timer_words(s)),
            }
        }
        _ => get("text").to_owned(),
    };
    let deleted = get("kind") == "deleted";
    let edited = m.get("edited_at").is_some_and(|v| !v.is_null()) && !deleted;
    let edited = if edited { " (edited)" } else { "" };
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
    fn timers_read_and_show_in_their_largest_unit() {
        for (text, seconds, shown) in [
            ("off", 0, "off"),
            ("30s", 30, "30s"),
            ("90m", 5_400, "90m"),
            ("8h", 28_800, "8h"),
            ("1d", 86_400, "1d"),
            ("2w", 1_209_600, "2w"),
            ("365d", 31_536_000, "365d"),
        ] {
            assert_eq!(parse_timer(text), Ok(seconds), "{text}");
            assert_eq!(timer_words(u64::from(seconds)), shown, "{seconds}");
        }
        for bad in ["", "5", "1y", "366d", "-1h", "1.5h", "60w"] {
            assert!(parse_timer(bad).is_err(), "{bad}");
        }
        let m = json!({"direction":"incoming","kind":"timer","timer_seconds":3600,"status":"received","stored_at":0});
        assert!(
            message_line(&m, "bob", &Names::new())
                .ends_with("bob: ⏱ set disappearing messages to 1h")
        );
        let m = json!({"direction":"outgoing","kind":"timer","timer_seconds":0,"status":"sent","stored_at":0});
        assert!(
            message_line(&m, "bob", &Names::new())
                .contains("me: ⏱ turned disappearing messages off")
        );
    }

    #[test]
    fn lines_show_direction_marks_edits_and_reactions() {
        let m = json!({"direction":"outgoing","kind":"text","text":"hi","status":"delivered","stored_at":0,
                       "edited_at":5,"reactions":[{"from":"x","emoji":"👍"}]});
        let line = message_line(&m, "bob", &Names::new());
        assert!(line.contains("me: hi (edited) ✓✓") && line.ends_with("[👍]"), "{line}");
        let m = json!({"direction":"incoming","kind":"deleted","status":"received","stored_at":0});
        assert!(message_line(&m, "bob", &Names::new()).contains("bob: (deleted)"));
        let m = json!({"direction":"outgoing","kind":"text","text":"x","status":"failed","failure":"no prekeys","stored_at":0});
        assert!(message_line(&m, "bob", &Names::new()).ends_with("✗ (no prekeys)"));
    }

    #[test]
    fn group_authors_are_named_from_contacts_or_shown_by_id() {
        let names = names(&json!([{"peer_id":"12D3KooWalice","name":"alice"},
                                  {"peer_id":"12D3KooWcarol","name":null,"profile_name":"Carol"}]));
        let m = json!({"direction":"incoming","kind":"text","text":"hi","group":"g1","peer":"12D3KooWalice","status":"received","stored_at":0});
        assert!(message_line(&m, "climbers", &names).contains("alice: hi"));
        let m = json!({"direction":"incoming","kind":"text","text":"yo","group":"g1","peer":"12D3KooWstranger","status":"received","stored_at":0});
        assert!(message_line(&m, "climbers", &names).contains("…stranger: yo"));
        let m = json!({"direction":"incoming","kind":"text","text":"hey","group":"g1","peer":"12D3KooWcarol","status":"received","stored_at":0});
        assert!(
            message_line(&m, "climbers", &names).contains("~Carol: hey"),
            "their own name, marked"
        );
    }

    #[test]
    fn attachments_show_name_size_and_where_they_stand() {
        let m = json!({"direction":"incoming","kind":"media","file_name":"a.jpg","text":"look","status":"received","stored_at":0,
                       "attachment":{"size":3_500_000,"state":"saved","path":"/d/a.jpg"}});
        let line = message_line(&m, "bob", &Names::new());
        assert!(line.contains("bob: [file a.jpg, 3.3 MiB] look (saved to /d/a.jpg)"), "{line}");
        let m = json!({"direction":"incoming","kind":"media","file_name":"v.mp4","status":"received","stored_at":0,
                       "attachment":{"size":10,"state":"downloading","chunks_done":3,"chunks":4}});
        assert!(
            message_line(&m, "bob", &Names::new()).contains("[file v.mp4, 10 B] (downloading 75%)")
        );
        assert_eq!(human_size(2 << 30), "2.0 GiB");
        let m = json!({"direction":"incoming","kind":"media","file_name":"p.png","status":"received","stored_at":0,
                       "attachment":{"size":2048,"state":"saved","path":"/d/p.png","image":[1920,1080]}});
        let line = message_line(&m, "bob", &Names::new());
        assert!(
            line.contains("bob: [image 1920×1080] p.png, 2.0 KiB (saved to /d/p.png)"),
            "{line}"
        );
    }
}
