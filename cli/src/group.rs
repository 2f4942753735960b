//! `kith group …`: create and run groups through the node's API.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::conn::{Conn, NetArgs};
use crate::render::{self, Names};

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
    /// Accepts an invitation to a group someone added you to (sending in it accepts it too).
    Accept {
        /// The group (name or id).
        group: String,
    },
    /// Declines an invitation to a group: you leave it.
    Decline {
        /// The group (name or id).
        group: String,
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

/// One line for a group: name, size, id prefix, and whether we left it or are invited.
fn label(g: &Value, names: &Names) -> String {
    let members = g["members"].as_array().map_or(0, Vec::len);
    let state = if g["joined"] == false {
        "  (left)".to_owned()
    } else if let Some(by) = g["invited_by"].as_str() {
        format!("  (invitation from {}: kith group accept|decline)", render::name_of(names, by))
    } else {
        String::new()
    };
    let noun = if members == 1 { "member" } else { "members" };
    format!(
        "{}  {members} {noun}  {}{state}",
        g["name"].as_str().unwrap_or(""),
        g["id"].as_str().unwrap_or("").get(..16).unwrap_or("")
    )
}

/// Names for peers: ours for contacts, theirs (marked `~`) for others, `you` for us.
async fn names(conn: &mut Conn) -> anyhow::Result<Names> {
    let contacts = conn.call("contact.list", Value::Null).await?;
    let me = conn.call("id", Value::Null).await?;
    let mut names = render::names(&contacts);
    if let Some(me) = me["peer_id"].as_str() {
        names.insert(me.to_owned(), "you".to_owned());
    }
    Ok(names)
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
        GroupCommand::Accept { group } => {
            conn.call("group.accept", json!({ "group": group })).await?;
            say!("joined {group}");
        }
        GroupCommand::Decline { group } => {
            conn.call("group.decline", json!({ "group": group })).await?;
            say!("declined {group}: you left it");
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
                let names = names(conn).await?;
                for g in groups.as_array().into_iter().flatten() {
                    say!("{}", label(g, &names));
                }
            }
        }
        GroupCommand::Info { group, json } => {
            let info = conn.call("group.info", json!({ "group": group })).await?;
            if json {
                println!("{info}");
            } else {
                let names = names(conn).await?;
                say!("{}", label(&info, &names));
                let admins: Vec<&str> = info["admins"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                // Members by the name we gave them, else their own; the peer id beside it.
                for m in info["members"].as_array().into_iter().flatten().filter_map(Value::as_str)
                {
                    let admin = if admins.contains(&m) { "  (admin)" } else { "" };
                    let name = names.get(m).map_or("(not a contact)", String::as_str);
                    say!("  {name}  kith:{m}{admin}");
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
        let names = Names::from([("12D3KooWalice".to_owned(), "alice".to_owned())]);
        let one = label(&json!({ "name": "solo", "members": ["a"], "id": id }), &names);
        assert_eq!(one, "solo  1 member  0123456789abcdef");
        let two = json!({ "name": "duo", "members": ["a", "b"], "id": id, "joined": false });
        assert_eq!(label(&two, &names), "duo  2 members  0123456789abcdef  (left)");
        let invited = json!({ "name": "trio", "members": ["a", "b", "c"], "id": id,
                              "joined": true, "invited_by": "12D3KooWalice" });
        assert_eq!(
            label(&invited, &names),
            "trio  3 members  0123456789abcdef  (invitation from alice: kith group accept|decline)"
        );
    }
}
