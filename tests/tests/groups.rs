//! Groups over gossipsub with sender keys, with real nodes on 127.0.0.1: eight members and 500
//! messages, an offline member catching up from its relay, a removed member locked out, forged /
//! replayed / outsider messages refused and their publishers penalised, and concurrent changes
//! by two admins converging.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use kith_node::kith_core::engine::Event;
use kith_node::kith_core::group::group_tag;
use kith_node::kith_core::model::Message;
use kith_node::kith_protocol::content::Body;
use kith_node::kith_protocol::envelope::GroupEnvelope;
use kith_node::kith_protocol::{GroupId, MessageId, UserId};
use kith_node::{Node, NodeEvent};
use kith_tests::{TestNode, TestRelay, eventually, user_with_relays};
use libp2p::gossipsub;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, noise, tcp, yamux};
use rand::RngExt;

const WAIT: Duration = Duration::from_secs(90);

/// Starts `n` nodes and connects each to every other.
async fn nodes(n: usize, duplicate_cache: Option<Duration>) -> Vec<TestNode> {
    let mut all = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TestNode::config(dir.path(), vec![]);
        if let Some(cache) = duplicate_cache {
            config.gossip_duplicate_cache = cache;
        }
        let node = Node::create(config).await.unwrap();
        all.push(TestNode { node, dir });
    }
    connect_all(&all.iter().map(|t| &t.node).collect::<Vec<_>>()).await;
    all
}

async fn connect_all(nodes: &[&Node]) {
    for (i, a) in nodes.iter().enumerate() {
        for b in nodes.iter().skip(i + 1) {
            for address in b.addresses().await.unwrap() {
                a.connect(address).await.unwrap();
            }
        }
    }
}

/// Texts of a group's history, in history order.
async fn texts(node: &Node, group: GroupId) -> Vec<String> {
    node.group_history(group, None, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m: Message| match m.body {
            Some(Body::Text(t)) => Some(t.body),
            _ => None,
        })
        .collect()
}

/// Waits until every node sees `expected` as the group's members.
async fn converged(nodes: &[&Node], group: GroupId, expected: &BTreeSet<UserId>) {
    for (i, node) in nodes.iter().enumerate() {
        eventually(WAIT, &format!("member {i} to see the member list"), || async {
            let members = node.group(group).await?.map(|g| g.members).unwrap_or_default();
            Ok((members.into_iter().collect::<BTreeSet<_>>() == *expected).then_some(()))
        })
        .await
        .unwrap();
    }
}

fn ids(nodes: &[&Node]) -> BTreeSet<UserId> {
    nodes.iter().map(|n| n.user_id()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_members_exchange_500_messages_each_received_exactly_once() {
    let all = nodes(8, None).await;
    let refs: Vec<&Node> = all.iter().map(|t| &t.node).collect();
    let others = refs[1..].iter().map(|n| n.user_id()).collect();
    let group = refs[0].create_group("eight", others).await.unwrap();
    converged(&refs, group, &ids(&refs)).await;

    let mut rng = rand::rng();
    let mut sent = BTreeSet::new();
    for i in 0..500 {
        let from = rng.random_range(0..refs.len());
        let text = format!("message {i} from {from}");
        refs[from].send_group_text(group, text.clone()).await.unwrap();
        sent.insert(text);
    }
    for (i, node) in refs.iter().enumerate() {
        let got = eventually(WAIT, &format!("member {i} to have all 500"), || async {
            let got = node.group_history(group, None, usize::MAX).await?;
            Ok((got.len() >= 500).then_some(got))
        })
        .await
        .unwrap();
        let mut by_id: HashMap<MessageId, usize> = HashMap::new();
        for m in &got {
            *by_id.entry(m.id).or_default() += 1;
        }
        assert!(by_id.values().all(|n| *n == 1), "member {i} stored a message twice");
        assert_eq!(got.len(), 500, "member {i}");
        let texts: BTreeSet<String> = texts(node, group).await.into_iter().collect();
        assert_eq!(texts, sent, "member {i} has exactly the messages sent");
    }
    // Nothing arrived more than once later either (a late copy by mail is a duplicate): once
    // every outbox is empty, every copy was acknowledged, that is, stored or dropped as a
    // duplicate by its recipient.
    for (i, node) in refs.iter().enumerate() {
        eventually(WAIT, &format!("member {i}'s outbox to drain"), || async {
            Ok((node.outbox_len().await? == 0).then_some(()))
        })
        .await
        .unwrap();
    }
    for node in &refs {
        assert_eq!(node.group_history(group, None, usize::MAX).await.unwrap().len(), 500);
    }
}

/// A relay, and three users whose home relay it is (each knowing the others' contact strings)
/// in a group "trio" whose mesh has formed and whose sender keys have landed.
struct Trio {
    relay: TestRelay,
    relays: Vec<Multiaddr>,
    dirs: Vec<tempfile::TempDir>,
    users: Vec<Node>,
    group: GroupId,
}

async fn trio_with_relay() -> Trio {
    let relay = TestRelay::start(Default::default()).await.unwrap();
    let relays = vec![relay.address().await.unwrap()];
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut users = Vec::new();
    for dir in &dirs {
        users.push(user_with_relays(dir.path(), relays.clone(), true).await.unwrap());
    }
    connect_all(&users.iter().collect::<Vec<_>>()).await;
    // Everyone knows everyone's relays (their contact strings carry them).
    for a in &users {
        for (j, b) in users.iter().enumerate() {
            if a.user_id() != b.user_id() {
                a.add_contact(&b.contact_string(), &format!("user{j}")).await.unwrap();
            }
        }
    }
    let group =
        users[0].create_group("trio", vec![users[1].user_id(), users[2].user_id()]).await.unwrap();
    let refs: Vec<&Node> = users.iter().collect();
    converged(&refs, group, &ids(&refs)).await;
    users[0].send_group_text(group, "before").await.unwrap();
    for node in &refs {
        eventually(WAIT, "the first message everywhere", || async {
            Ok(texts(node, group).await.contains(&"before".to_owned()).then_some(()))
        })
        .await
        .unwrap();
    }
    Trio { relay, relays, dirs, users, group }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_what_it_missed_from_its_relay() {
    let Trio { relay, relays, dirs, mut users, group } = trio_with_relay().await;
    let carol = users.pop().unwrap();
    carol.shutdown().await.unwrap();
    let mut missed = Vec::new();
    for i in 0..20 {
        let text = format!("missed {i}");
        users[i % 2].send_group_text(group, text.clone()).await.unwrap();
        missed.push(text);
    }
    eventually(WAIT, "the relay to hold Carol's copies", || async {
        Ok((relay.usage().await?.envelopes >= 20).then_some(()))
    })
    .await
    .unwrap();
    let carol = user_with_relays(dirs[2].path(), relays.clone(), false).await.unwrap();
    let got = eventually(WAIT, "Carol to catch up", || async {
        let got = texts(&carol, group).await;
        Ok((got.len() > missed.len()).then_some(got))
    })
    .await
    .unwrap();
    let mut expected: Vec<String> = vec!["before".into()];
    expected.extend(missed);
    let (mut got_sorted, mut expected_sorted) = (got.clone(), expected.clone());
    got_sorted.sort();
    expected_sorted.sort();
    assert_eq!(got_sorted, expected_sorted, "each missed message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_can_read_nothing_sent_after_its_removal() {
    let mut all = nodes(4, None).await;
    let others = all[1..].iter().map(|t| t.node.user_id()).collect();
    let group = all[0].node.create_group("four", others).await.unwrap();
    {
        let refs: Vec<&Node> = all.iter().map(|t| &t.node).collect();
        converged(&refs, group, &ids(&refs)).await;
        refs[1].send_group_text(group, "before").await.unwrap();
        for node in &refs {
            eventually(WAIT, "the first message", || async {
                Ok((texts(node, group).await == ["before"]).then_some(()))
            })
            .await
            .unwrap();
        }
    }
    // Dave's device is copied while it is still a member: the copy keeps every key Dave had
    // and never hears of the removal.
    let dave = all.pop().unwrap();
    let dave_id = dave.node.user_id();
    dave.node.shutdown().await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dave.dir.path(), copy.path());
    let dave_node = Node::start(TestNode::config(dave.dir.path(), vec![])).await.unwrap();
    connect_all(&[&all[0].node, &dave_node]).await;
    all[0]
        .node
        .group_command(
            group,
            kith_node::kith_core::engine::GroupCommand::Remove { member: dave_id },
        )
        .await
        .unwrap();
    let refs: Vec<&Node> = all.iter().map(|t| &t.node).collect();
    converged(&refs, group, &ids(&refs)).await;
    eventually(WAIT, "Dave to learn it was removed", || async {
        Ok(dave_node.group(group).await?.is_some_and(|g| !g.joined).then_some(()))
    })
    .await
    .unwrap();
    dave_node.shutdown().await.unwrap();

    // The copy comes up, still subscribed with its old keys, and connects to everyone.
    let mut config = TestNode::config(copy.path(), vec![]);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let stale = Node::start(config).await.unwrap();
    assert!(stale.group(group).await.unwrap().unwrap().joined);
    let mut with_stale = refs.clone();
    with_stale.push(&stale);
    connect_all(&with_stale).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // subscriptions, mesh

    let after = ["after one", "after two", "after three"];
    for (i, text) in after.iter().enumerate() {
        refs[i].send_group_text(group, *text).await.unwrap();
    }
    for node in &refs {
        eventually(WAIT, "the remaining members to chat on", || async {
            Ok((texts(node, group).await.len() == 1 + after.len()).then_some(()))
        })
        .await
        .unwrap();
    }
    // The gossip reached the stale copy (every later message waits there, unopenable), and
    // nothing of it opened.
    eventually(WAIT, "the stale copy to receive the later gossip", || async {
        Ok((stale.pending_group_messages(group).await? >= after.len()).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(texts(&stale, group).await, ["before"]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "kith.sock" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A plain gossipsub peer: Kith's gossip settings, no Kith.
async fn outsider(cache: Duration) -> Swarm<gossipsub::Behaviour> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| kith_node::testing::gossip_behaviour(cache).unwrap())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    swarm
}

/// Drives `swarm` for `time`, returning the gossip messages it received.
async fn drive(swarm: &mut Swarm<gossipsub::Behaviour>, time: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + time;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, swarm.next()).await {
        if let SwarmEvent::Behaviour(gossipsub::Event::Message {
            message,
            message_id,
            propagation_source,
        }) = event
        {
            swarm.behaviour_mut().report_message_validation_result(
                &message_id,
                &propagation_source,
                gossipsub::MessageAcceptance::Accept,
            );
            got.push(message.data);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_outsider_messages_are_refused_and_only_garbage_is_penalised() {
    // Members remember gossip ids for 6 s, so a replay after that reaches their engines.
    let cache = Duration::from_secs(6);
    let all = nodes(3, Some(cache)).await;
    let refs: Vec<&Node> = all.iter().map(|t| &t.node).collect();
    let others = refs[1..].iter().map(|n| n.user_id()).collect();
    let group = refs[0].create_group("three", others).await.unwrap();
    converged(&refs, group, &ids(&refs)).await;
    let topic = kith_node::testing::gossip_topic(&group_tag(&group));

    // One outsider per kind of attack (a single invalid message already graylists a peer).
    async fn join(refs: &[&Node], topic: &gossipsub::IdentTopic) -> Swarm<gossipsub::Behaviour> {
        let mut swarm = outsider(Duration::from_secs(1)).await;
        swarm.behaviour_mut().subscribe(topic).unwrap();
        drive(&mut swarm, Duration::from_millis(200)).await;
        let addrs: Vec<Multiaddr> = swarm.listeners().cloned().collect();
        let peer = *swarm.local_peer_id();
        for node in refs {
            node.connect(addrs[0].clone().with_p2p(peer).unwrap()).await.unwrap();
        }
        drive(&mut swarm, Duration::from_secs(2)).await;
        swarm
    }
    let mut forger = join(&refs, &topic).await;
    refs[1].send_group_text(group, "real").await.unwrap();
    let real = drive(&mut forger, Duration::from_secs(2))
        .await
        .into_iter()
        .next()
        .expect("the outsider heard the real message on the topic");
    let original: GroupEnvelope = kith_node::kith_protocol::decode(&real).unwrap();
    // Every member's refusals from here on.
    let mut events: Vec<_> = refs.iter().map(|n| n.subscribe()).collect();

    // 1. Forged: a flipped ciphertext bit under a new id.
    let mut forged = original.clone();
    forged.id = MessageId([0xf0; 16]);
    forged.message.ciphertext[0] ^= 1;
    forger
        .behaviour_mut()
        .publish(topic.clone(), kith_node::kith_protocol::encode(&forged).unwrap())
        .unwrap();
    // 2. Outsider: a well-formed message from someone who is not a member.
    let mut stranger = join(&refs, &topic).await;
    let mut outsider_msg = original.clone();
    outsider_msg.id = MessageId([0xf1; 16]);
    outsider_msg.sender = UserId([0x42; 32]);
    stranger
        .behaviour_mut()
        .publish(topic.clone(), kith_node::kith_protocol::encode(&outsider_msg).unwrap())
        .unwrap();
    // 3. Replay: the real message, byte for byte, once the members' gossip has forgotten it.
    // (Gossip's id cache expires lazily, as new ids come in: the group chats on meanwhile.)
    tokio::time::sleep(cache + Duration::from_secs(1)).await;
    refs[2].send_group_text(group, "later").await.unwrap();
    for node in &refs {
        eventually(WAIT, "the later message", || async {
            Ok((texts(node, group).await.len() == 2).then_some(()))
        })
        .await
        .unwrap();
    }
    let mut replayer = join(&refs, &topic).await;
    replayer.behaviour_mut().publish(topic.clone(), real).unwrap();
    // 4. Garbage: bytes that are no group envelope at all.
    let mut vandal = join(&refs, &topic).await;
    vandal.behaviour_mut().publish(topic.clone(), vec![0xde, 0xad, 0xbe, 0xef]).unwrap();
    let mut attackers = [forger, stranger, replayer, vandal];
    for swarm in &mut attackers {
        drive(swarm, Duration::from_millis(500)).await;
    }
    let attacker_ids: Vec<PeerId> = attackers.iter().map(|s| *s.local_peer_id()).collect();
    for (i, node) in refs.iter().enumerate() {
        // Each member refuses each of the four (its own message replayed to it included).
        let expected = 4;
        let mut refused = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        while refused < expected {
            let event = tokio::time::timeout_at(deadline, events[i].recv())
                .await
                .unwrap_or_else(|_| panic!("member {i} refused only {refused} of {expected}"));
            if matches!(event, Ok(NodeEvent::Engine(Event::Rejected { .. }))) {
                refused += 1;
            }
        }
        // Only the garbage costs its publisher: what an honest forwarder may have judged
        // valid (a key it holds and we do not, an addition we have not seen) costs nothing.
        let vandal_score = node.gossip_score(attacker_ids[3]).await.unwrap();
        assert!(vandal_score.is_some_and(|s| s < 0.0), "member {i}: {vandal_score:?}");
        for (kind, peer) in ["forged", "outsider", "replayed"].iter().zip(&attacker_ids) {
            let score = node.gossip_score(*peer).await.unwrap().unwrap_or(0.0);
            assert!(score >= 0.0, "member {i} penalised the {kind} publisher: {score}");
        }
        assert_eq!(texts(node, group).await, ["real", "later"], "member {i} accepted nothing else");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_add_and_remove_by_two_admins_converge() {
    use kith_node::kith_core::engine::GroupCommand;
    let all = nodes(5, None).await;
    let refs: Vec<&Node> = all.iter().map(|t| &t.node).collect();
    let first: Vec<UserId> = refs[1..4].iter().map(|n| n.user_id()).collect();
    let group = refs[0].create_group("five", first).await.unwrap();
    converged(&refs[..4], group, &ids(&refs[..4])).await;
    refs[0]
        .group_command(group, GroupCommand::Promote { member: refs[1].user_id() })
        .await
        .unwrap();
    for node in &refs[..4] {
        eventually(WAIT, "the promotion", || async {
            Ok(node.group(group).await?.is_some_and(|g| g.admins.len() == 2).then_some(()))
        })
        .await
        .unwrap();
    }
    // At once: admin 0 adds 4, admin 1 removes 3.
    let (add, remove) = (refs[4].user_id(), refs[3].user_id());
    let (a, b) = tokio::join!(
        refs[0].group_command(group, GroupCommand::Add { member: add }),
        refs[1].group_command(group, GroupCommand::Remove { member: remove }),
    );
    a.unwrap();
    b.unwrap();
    let remaining = [refs[0], refs[1], refs[2], refs[4]];
    converged(&remaining, group, &ids(&remaining)).await;
    eventually(WAIT, "the removed member to know", || async {
        Ok(refs[3].group(group).await?.is_some_and(|g| !g.joined).then_some(()))
    })
    .await
    .unwrap();
    // And they chat on, the newcomer included.
    refs[4].send_group_text(group, "hello all").await.unwrap();
    for node in &remaining {
        eventually(WAIT, "the newcomer's message", || async {
            Ok(texts(node, group).await.contains(&"hello all".to_owned()).then_some(()))
        })
        .await
        .unwrap();
    }
}

/// Issue 18: a file sent to a group of three reaches both other members byte-identical; they
/// fetch it from the sender, which serves current members only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_to_a_group_reaches_every_member() {
    use kith_node::media::AttachmentState;

    let all = nodes(3, None).await;
    let refs: Vec<&Node> = all.iter().map(|t| &t.node).collect();
    let others = refs[1..].iter().map(|n| n.user_id()).collect();
    let group = refs[0].create_group("climbers", others).await.unwrap();
    converged(&refs, group, &ids(&refs)).await;

    let files = tempfile::tempdir().unwrap();
    let path = kith_tests::random_file(files.path(), "topo.pdf", 3 * 1024 * 1024 + 77).unwrap();
    let sent = refs[0].send_file_to_group(group, &path, Some("the route".into())).await.unwrap();
    assert_eq!(sent.chunks, 7);
    for (i, member) in refs.iter().enumerate().skip(1) {
        let saved = eventually(WAIT, &format!("member {i} to save the file"), || async {
            for a in member.attachments(None).await? {
                match a.state {
                    AttachmentState::Saved(path) if a.message == sent.message => {
                        return Ok(Some(path));
                    }
                    AttachmentState::Failed(why) => anyhow::bail!("member {i}: {why}"),
                    _ => {}
                }
            }
            Ok(None)
        })
        .await
        .unwrap();
        assert_eq!(
            kith_tests::blake3_file(&saved).unwrap(),
            kith_tests::blake3_file(&path).unwrap(),
            "member {i}"
        );
        let message = member.message(sent.message).await.unwrap().unwrap();
        assert_eq!(message.group, Some(group), "member {i}: it is the group's message");
    }
    // The members shared the chunks out: each took half from the sender and half from the
    // other (sealed again from what it saved), instead of the sender serving the file twice.
    let sealed = 3 * 1024 * 1024 + 77 + 7 * 16;
    let served: Vec<u64> = refs.iter().map(|n| n.media_served().bytes).collect();
    println!(
        "bytes served: sender {}, members {:?} (file sealed: {sealed})",
        served[0],
        &served[1..]
    );
    assert!(served[0] >= sealed, "every chunk came from the sender at least once");
    assert!(served[0] < 2 * sealed, "the sender served less than a copy per member: {served:?}");
    assert!(served[1] > 0 && served[2] > 0, "each member served the other: {served:?}");
}

/// Issue 18: a group's file reaches a member that was offline when it was sent, from the
/// member's relay, after the sender and everyone else have gone: the sender uploaded the
/// chunks there for that member, as for a direct attachment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_a_group_file_from_its_relay_after_the_sender_left() {
    use kith_node::media::{AttachmentState, MediaEvent};

    let Trio { relay, relays, dirs, mut users, group } = trio_with_relay().await;
    let carol = users.pop().unwrap();
    carol.shutdown().await.unwrap();

    let mut uploads = users[0].subscribe();
    let files = tempfile::tempdir().unwrap();
    let path = kith_tests::random_file(files.path(), "map.png", 1024 * 1024 + 5).unwrap();
    let sent = users[0].send_file_to_group(group, &path, None).await.unwrap();
    let relay_peer = relay.node.peer_id();
    tokio::time::timeout(WAIT, async {
        while let Ok(event) = uploads.recv().await {
            if let NodeEvent::Media(MediaEvent::Uploaded { message, relay, .. }) = event
                && message == sent.message
                && relay == relay_peer
            {
                return;
            }
        }
    })
    .await
    .expect("the sender to upload the file to Carol's relay");
    for node in users.drain(..) {
        node.shutdown().await.unwrap();
    }

    let carol = user_with_relays(dirs[2].path(), relays.clone(), false).await.unwrap();
    let saved = eventually(WAIT, "Carol to save the file", || async {
        for a in carol.attachments(None).await? {
            match a.state {
                AttachmentState::Saved(path) if a.message == sent.message => return Ok(Some(path)),
                AttachmentState::Failed(why) => anyhow::bail!("{why}"),
                _ => {}
            }
        }
        Ok(None)
    })
    .await
    .unwrap();
    assert_eq!(kith_tests::blake3_file(&saved).unwrap(), kith_tests::blake3_file(&path).unwrap());
}
