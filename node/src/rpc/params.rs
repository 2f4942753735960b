//! The parameters of each method, typed: a missing, unknown or wrong-typed field is an
//! `invalid params` error (-32602) that names the field, never a silent default.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::RpcError;

/// Reads `params` as `T`. Absent params (`null`) read as an empty object, so a method whose
/// fields are all optional can be called without any.
pub(super) fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = match params {
        Value::Null => Value::Object(serde_json::Map::new()),
        other => other,
    };
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            RpcError::invalid_params(inner.to_string())
        } else {
            RpcError::invalid_params(format!("`{path}`: {inner}"))
        }
    })
}

/// Methods that take no parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoParams {}

/// `contact.add`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactAdd {
    pub(super) contact: String,
    pub(super) name: String,
}

/// `contact.find`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupCreate {
    /// Where to write the backup (absolute).
    pub(super) path: String,
    /// Encrypt it under this passphrase instead of a new recovery code.
    pub(super) passphrase: Option<String>,
}

/// `contact.find`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactFind {
    pub(super) contact: String,
}

/// `contact.verify`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactVerify {
    pub(super) contact: String,
    #[serde(default)]
    pub(super) mark: bool,
}

/// `contact.trust`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactOnly {
    pub(super) contact: String,
}

/// `contact.rename`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactRename {
    pub(super) contact: String,
    pub(super) name: String,
}

/// `contact.block`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContactBlock {
    pub(super) contact: String,
    #[serde(default = "yes")]
    pub(super) blocked: bool,
}

/// What `send` waits for.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum WaitFor {
    Queued,
    Sent,
    Delivered,
    Read,
}

/// `send`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Send {
    pub(super) to: String,
    pub(super) text: String,
    pub(super) reply_to: Option<String>,
    pub(super) wait: Option<WaitFor>,
    pub(super) timeout_ms: Option<u64>,
}

/// `react`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct React {
    pub(super) to: String,
    pub(super) target: String,
    pub(super) emoji: String,
    #[serde(default)]
    pub(super) remove: bool,
}

/// `edit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Edit {
    pub(super) to: String,
    pub(super) target: String,
    pub(super) text: String,
}

/// `delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Delete {
    pub(super) to: String,
    pub(super) target: String,
}

/// `read`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Read {
    pub(super) peer: String,
    pub(super) ids: Vec<String>,
}

/// `typing`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Typing {
    pub(super) to: String,
    #[serde(default = "yes")]
    pub(super) typing: bool,
}

/// A presence status.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Presence {
    Online,
    Away,
    Offline,
}

/// `presence`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetPresence {
    pub(super) status: Presence,
}

/// `profile.set`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProfileSet {
    pub(super) name: String,
}

/// `send_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendFile {
    pub(super) to: String,
    pub(super) path: std::path::PathBuf,
    pub(super) caption: Option<String>,
}

/// `group.send_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupSendFile {
    pub(super) group: String,
    pub(super) path: std::path::PathBuf,
    pub(super) caption: Option<String>,
}

/// `attachments`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Attachments {
    pub(super) peer: Option<String>,
}

/// `history`: a conversation with `peer`, or a `group`'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct History {
    pub(super) peer: Option<String>,
    pub(super) group: Option<String>,
    pub(super) limit: Option<u64>,
    pub(super) before: Option<u64>,
}

/// `forget`: messages (or, without `ids`, the whole conversation) deleted on this device.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Forget {
    pub(super) peer: Option<String>,
    pub(super) group: Option<String>,
    pub(super) ids: Option<Vec<String>>,
}

/// `disappear`: a conversation's disappearing-message timer, set to `seconds` (0: off) or,
/// without it, read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Disappear {
    pub(super) peer: Option<String>,
    pub(super) group: Option<String>,
    pub(super) seconds: Option<u32>,
}

/// `message`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageById {
    pub(super) id: String,
}

/// `connect`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Connect {
    pub(super) address: String,
}

/// `group.create`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupCreate {
    pub(super) name: String,
    #[serde(default)]
    pub(super) members: Vec<String>,
}

/// `group.info`, `group.leave`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupOnly {
    pub(super) group: String,
}

/// `group.add`, `group.remove`, `group.promote`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupMember {
    pub(super) group: String,
    pub(super) member: String,
}

/// `group.rename`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupRename {
    pub(super) group: String,
    pub(super) name: String,
}

/// `group.send`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupSend {
    pub(super) group: String,
    pub(super) text: String,
    pub(super) reply_to: Option<String>,
}

/// `group.react`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupReact {
    pub(super) group: String,
    pub(super) target: String,
    pub(super) emoji: String,
    #[serde(default)]
    pub(super) remove: bool,
}

/// `group.edit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupEdit {
    pub(super) group: String,
    pub(super) target: String,
    pub(super) text: String,
}

/// `group.delete`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupDelete {
    pub(super) group: String,
    pub(super) target: String,
}

/// `group.read`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupRead {
    pub(super) group: String,
    pub(super) ids: Vec<String>,
}

/// `group.typing`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupTyping {
    pub(super) group: String,
    #[serde(default = "yes")]
    pub(super) typing: bool,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error_of<T: DeserializeOwned>(params: Value) -> RpcError {
        match parse::<T>(params) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    /// Issue 15: a wrong-typed parameter was read as its default (`"mark": "yes"` did not
    /// mark); now it is -32602 naming the field.
    #[test]
    fn a_wrong_typed_parameter_is_refused_by_name() {
        let e = error_of::<ContactVerify>(json!({"contact": "bob", "mark": "yes"}));
        assert_eq!(e.code, -32602);
        assert!(e.message.starts_with("`mark`: invalid type"), "{}", e.message);
        let e = error_of::<Send>(json!({"to": "bob", "text": "hi", "timeout_ms": -5}));
        assert!(e.message.starts_with("`timeout_ms`"), "{}", e.message);
        let e = error_of::<Read>(json!({"peer": "bob", "ids": ["ab", 7]}));
        assert!(e.message.starts_with("`ids[1]`"), "{}", e.message);
    }

    #[test]
    fn unknown_and_missing_parameters_are_named() {
        let e = error_of::<Send>(json!({"to": "bob", "text": "hi", "wiat": "read"}));
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("unknown field `wiat`"), "{}", e.message);
        let e = error_of::<Send>(json!({"to": "bob"}));
        assert!(e.message.contains("missing field `text`"), "{}", e.message);
        let e = error_of::<Send>(json!({"to": "bob", "text": "hi", "wait": "soon"}));
        assert!(e.message.starts_with("`wait`: unknown variant `soon`"), "{}", e.message);
        let e = error_of::<NoParams>(json!({"verbose": true}));
        assert!(e.message.contains("unknown field `verbose`"), "{}", e.message);
        let e = error_of::<Send>(json!(["bob", "hi"]));
        assert_eq!(e.code, -32602);
    }

    #[test]
    fn defaults_apply_only_to_absent_fields() {
        let p: ContactBlock = parse(json!({"contact": "bob"})).unwrap();
        assert!(p.blocked);
        let p: ContactBlock = parse(json!({"contact": "bob", "blocked": false})).unwrap();
        assert!(!p.blocked);
        let p: Send = parse(json!({"to": "bob", "text": "hi", "wait": "delivered"})).unwrap();
        assert!(matches!(p.wait, Some(WaitFor::Delivered)));
        parse::<NoParams>(Value::Null).unwrap();
        let p: Attachments = parse(Value::Null).unwrap();
        assert!(p.peer.is_none());
    }
}
