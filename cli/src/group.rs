//! `kith group …`: create and run groups through the node's API.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::conn::{Conn, NetArgs};

/// What `kith group` does.
#[derive(Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// Creates a group with you as admin.
    Create {
        /// Its name.
        name: String,
        /// A member (contact name or peer id); repeat for more.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adds a member (admins).
    Add {
        /// The group (name or id).
        group: String,
        /// The member (contact name or peer id).
        member: String,
    },
    /// Removes a member (admins); every remaining member rotates its key.
    Remove {
        /// The group (name or id).
        group: String,
        /// The member (contact name or peer id).
        member: String,
    },
    /// Leaves a group.
    Leave {
        /// The group (name or id).
        group: String,
    },
    /// Lists your groups.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows a group's members and admins.
    Info {
        /// The group (name or id).
        group: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sends a text to a group.
    Send {
        /// The group (name or id).
        group: String,
        /// The text.
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Network settings for a node started just for this command.
        #[command(flatten)]
        net: NetArgs,
    },
}

impl GroupCommand {
    /// Sending needs the network; the rest only the store.
    pub(crate) fn net(&self) -> Option<&NetArgs> {
        match self {
            Self::Send { net, .. } => Some(net),
            _ => None,
        }
    }
}

fn label(g: &Value) -> String {
    let members = g["members"].as_array().map_or(0, Vec::len);
    let left = if g["joined"] == false { "  (left)" } else { "" };
    let noun = if members == 1 { "member" } else { "members" };
    format!(
        "{}  {members} {noun}  {}{left}",
        g["name"].as_str().unwrap_or(""),
        g["id"].as_str().unwrap_or("").get(..16).unwrap_or("")
    )
}

/// Runs one `kith group` command on `conn`.
#[allow(clippy::print_stdout, reason = "printing is this binary's job")]
pub(crate) async fn run(conn: &mut Conn, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { name, members, json } => {
            let result =
                conn.call("group.create", json!({ "name": name, "members": members })).await?;
            if json {
                println!("{result}");
            } else {
                say!("created {name}: {}", result["group"].as_str().unwrap_or(""));
            }
        }
        GroupCommand::Add { group, member } => {
            conn.call("group.add", json!({ "group": group, "member": member })).await?;
            say!("added {member} to {group}");
        }
        GroupCommand::Remove { group, member } => {
            conn.call("group.remove", json!({ "group": group, "member": member })).await?;
            say!("removed {member} from {group}");
        }
        GroupCommand::Leave { group } => {
            conn.call("group.leave", json!({ "group": group })).await?;
            say!("left {group}");
        }
        GroupCommand::List { json } => {
            let groups = conn.call("group.list", Value::Null).await?;
            if json {
                println!("{groups}");
            } else {
                for g in groups.as_array().into_iter().flatten() {
                    say!("{}", label(g));
                }
            }
        }
        GroupCommand::Info { group, json } => {
            let info = conn.call("group.info", json!({ "group": group })).await?;
            if json {
                println!("{info}");
            } else {
                say!("{}", label(&info));
                let admins: Vec<&str> = info["admins"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                // Members by the name we gave them, else their own; the peer id beside it.
                let me = conn.call("id", Value::Null).await?;
                let contacts = conn.call("contact.list", Value::Null).await?;
                let name_of = |peer: &str| -> String {
                    if me["peer_id"] == peer {
                        return "you".to_owned();
                    }
                    let contact =
                        contacts.as_array().into_iter().flatten().find(|c| c["peer_id"] == peer);
                    contact
                        .and_then(|c| c["name"].as_str().or(c["profile_name"].as_str()))
                        .map_or_else(|| "(not a contact)".to_owned(), str::to_owned)
                };
                for m in info["members"].as_array().into_iter().flatten().filter_map(Value::as_str)
                {
                    let admin = if admins.contains(&m) { "  (admin)" } else { "" };
                    say!("  {}  kith:{m}{admin}", name_of(m));
                }
            }
        }
        GroupCommand::Send { group, text, json, .. } => {
            let result = conn.call("group.send", json!({ "group": group, "text": text })).await?;
            if json {
                println!("{result}");
            } else {
                say!("{} sent", result["id"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_label_counts_its_members_in_good_grammar() {
        let id = "0123456789abcdef0123";
        let one = label(&json!({ "name": "solo", "members": ["a"], "id": id }));
        assert_eq!(one, "solo  1 member  0123456789abcdef");
        let two =
            label(&json!({ "name": "duo", "members": ["a", "b"], "id": id, "joined": false }));
        assert_eq!(two, "duo  2 members  0123456789abcdef  (left)");
    }
}
