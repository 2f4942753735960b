use kith_core::identity::IdentityKeyPair;
use kith_core::media::Sealer;
use kith_core::model::MessageStatus;

use super::*;

const NOW: UnixMillis = 1_700_000_000_000;

struct Setup {
    transfers: Transfers<u32>,
    _dir: tempfile::TempDir,
    sealed: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = MediaStore::open(kith_core::store::Store::memory().side());
    let sealed = dir.path().join("sealed");
    std::fs::create_dir_all(&sealed).unwrap();
    let transfers = Transfers::open(
        store,
        sealed.clone(),
        dir.path().join("downloads"),
        u64::MAX,
        Duration::from_secs(3600),
        NOW,
    )
    .unwrap();
    Setup { transfers, _dir: dir, sealed }
}

/// A manifest of `chunks` chunks of 1 KiB (with its sealed chunks).
fn manifest(chunks: u32) -> (MediaManifest, Vec<Vec<u8>>) {
    let size = u64::from(chunks) * 1024;
    let mut sealer = Sealer::new(&mut rand::rng(), size, 1024).unwrap();
    let sealed = (0..chunks).map(|_| sealer.seal_next(&[7; 1024]).unwrap()).collect();
    (sealer.finish("f.bin".into(), "application/octet-stream".into(), None).unwrap(), sealed)
}

fn peer_of_user() -> (UserId, PeerId) {
    let keys = IdentityKeyPair::generate(&mut rand::rng());
    (keys.user_id(), keys.libp2p_keypair().public().to_peer_id())
}

fn relay() -> (PeerId, Multiaddr) {
    let peer = PeerId::random();
    (peer, format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}").parse().unwrap())
}

/// The engine's event for an incoming attachment from `from`.
fn incoming(from: UserId, manifest: &MediaManifest) -> Event {
    Event::Message(Box::new(Message {
        id: MessageId([1; 16]),
        peer: from,
        group: None,
        direction: Direction::Incoming,
        sent_at: NOW,
        stored_at: NOW,
        body: Some(Body::Media(manifest.clone())),
        status: MessageStatus::Received,
        reactions: Vec::new(),
        edited_at: None,
        seq: 1,
        receipts: Vec::new(),
    }))
}

fn actions(t: &mut Transfers<u32>) -> Vec<MediaAction> {
    std::iter::from_fn(|| t.poll_action()).collect()
}

/// The chunk requests among `actions`: (source, peer, index).
fn requests(actions: &[MediaAction]) -> Vec<(usize, PeerId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            MediaAction::Request { source, peer, index, .. } => Some((*source, *peer, *index)),
            _ => None,
        })
        .collect()
}

/// Starts downloading `manifest` from `from` with `relays` as further sources.
fn start(
    t: &mut Transfers<u32>,
    from: UserId,
    manifest: &MediaManifest,
    relays: &[(PeerId, Multiaddr)],
) -> Vec<MediaAction> {
    t.incoming(&incoming(from, manifest));
    let starting = t.take_starting();
    assert_eq!(starting, vec![manifest.media_id]);
    t.start_download(manifest.media_id, false, relays, Instant::now()).unwrap();
    actions(t)
}

#[tokio::test(start_paused = true)]
async fn chunks_are_asked_round_robin_from_the_sender_and_our_relays_16_at_a_time() {
    let mut s = setup();
    let (from, sender) = peer_of_user();
    let (r1, r1_addr) = relay();
    let (manifest, _) = manifest(40);
    let out = start(&mut s.transfers, from, &manifest, &[(r1, r1_addr)]);
    assert!(matches!(out.first(), Some(MediaAction::StartWriter { .. })));
    let asked = requests(&out);
    assert_eq!(asked.len(), PARALLEL_CHUNKS);
    assert_eq!(asked[0], (0, sender, 0));
    assert_eq!(asked[1], (1, r1, 1));
    assert_eq!(asked[2], (0, sender, 2));
    // A written chunk frees a slot for the next.
    s.transfers.chunk_written(manifest.media_id, Some(1024), &[], Instant::now());
    let out = actions(&mut s.transfers);
    assert!(matches!(
        &out[..],
        [
            MediaAction::Event(MediaEvent::Progress { chunks_done: 1, .. }),
            MediaAction::Request { index: 16, .. }
        ]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_source_that_serves_bad_bytes_is_banned_and_its_chunk_fetched_elsewhere() {
    let mut s = setup();
    let (from, sender) = peer_of_user();
    let (r1, r1_addr) = relay();
    let (manifest, _) = manifest(2);
    let media = manifest.media_id;
    let relays = [(r1, r1_addr)];
    start(&mut s.transfers, from, &manifest, &relays);
    s.transfers.chunk_rejected(media, 0, 0, ChunkError::HashMismatch(0), &relays, Instant::now());
    let out = actions(&mut s.transfers);
    assert!(out.iter().any(|a| matches!(a, MediaAction::Event(MediaEvent::ChunkRefused { source, .. }) if *source == sender)));
    assert_eq!(requests(&out), vec![(1, r1, 0)], "the banned sender is not asked again");
}

#[tokio::test(start_paused = true)]
async fn sources_lacking_chunks_rest_with_backoff_from_1_s_to_60_s_and_a_reconnect_ends_the_wait() {
    let mut s = setup();
    let (from, sender) = peer_of_user();
    let (manifest, _) = manifest(1);
    let media = manifest.media_id;
    start(&mut s.transfers, from, &manifest, &[]);
    let mut expected = RETRY_FIRST;
    for _ in 0..8 {
        s.transfers.fetched(media, 0, 0, MediaResponse::NotFound, &[], Instant::now());
        assert!(requests(&actions(&mut s.transfers)).is_empty(), "resting");
        assert_eq!(s.transfers.poll_timeout(), Some(Instant::now() + expected));
        tokio::time::advance(expected).await;
        s.transfers.handle_timeout(&[], Instant::now());
        assert_eq!(requests(&actions(&mut s.transfers)), vec![(0, sender, 0)]);
        expected = (expected * 2).min(RETRY_MAX);
    }
    assert_eq!(expected, RETRY_MAX);
    // Resting again; the sender reconnects: asked at once.
    s.transfers.fetched(media, 0, 0, MediaResponse::NotFound, &[], Instant::now());
    actions(&mut s.transfers);
    s.transfers.connected(sender, &[], Instant::now());
    assert_eq!(requests(&actions(&mut s.transfers)), vec![(0, sender, 0)]);
}

#[tokio::test(start_paused = true)]
async fn when_every_reachable_source_served_bad_bytes_the_download_fails() {
    let mut s = setup();
    let (from, _) = peer_of_user();
    let (manifest, _) = manifest(1);
    let media = manifest.media_id;
    start(&mut s.transfers, from, &manifest, &[]);
    s.transfers.chunk_rejected(media, 0, 0, ChunkError::HashMismatch(0), &[], Instant::now());
    let out = actions(&mut s.transfers);
    assert!(out.iter().any(|a| matches!(a, MediaAction::StopWriter(m) if *m == media)));
    assert!(out.iter().any(|a| matches!(a, MediaAction::RemoveFile(_))));
    assert!(out.iter().any(|a| matches!(
        a,
        MediaAction::Event(MediaEvent::Failed { reason: MediaFailure::Corrupt(_), .. })
    )));
    let listed = s.transfers.list(None).unwrap();
    assert!(matches!(listed[0].state, AttachmentState::Failed(_)));
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_sends_its_chunks_elsewhere_and_a_resumed_download_asks_only_what_is_missing()
 {
    let mut s = setup();
    let (from, sender) = peer_of_user();
    let (r1, r1_addr) = relay();
    let relays = [(r1, r1_addr)];
    let (manifest, _) = manifest(4);
    let media = manifest.media_id;
    let out = start(&mut s.transfers, from, &manifest, &relays);
    assert_eq!(requests(&out).len(), 4);
    // The sender's stream broke: its two chunks go to the relay.
    s.transfers.source_down(media, 0, &relays, Instant::now());
    let again = requests(&actions(&mut s.transfers));
    assert_eq!(again.iter().map(|(src, _, _)| *src).collect::<Vec<_>>(), vec![1, 1]);
    let _ = sender;

    // A restart with chunks 0 and 2 recorded (and the partial file there): only 1 and 3.
    let mut record = s.transfers.store().incoming_record(&media).unwrap().unwrap();
    set_bit(&mut record.done, 0);
    set_bit(&mut record.done, 2);
    s.transfers.store().put_incoming(&media, &record).unwrap();
    let store = s.transfers.store().clone();
    let mut reopened: Transfers<u32> = Transfers::open(
        store,
        s.sealed.clone(),
        s.transfers.downloads_dir().to_owned(),
        u64::MAX,
        Duration::from_secs(3600),
        NOW,
    )
    .unwrap();
    assert_eq!(reopened.take_starting(), vec![media]);
    reopened.start_download(media, true, &[], Instant::now()).unwrap();
    let asked: Vec<u32> =
        requests(&actions(&mut reopened)).into_iter().map(|(_, _, i)| i).collect();
    assert_eq!(asked, vec![1, 3]);
    // Without the partial file, whatever the record says, it starts over.
    let mut fresh: Transfers<u32> = Transfers::open(
        reopened.store().clone(),
        s.sealed.clone(),
        reopened.downloads_dir().to_owned(),
        u64::MAX,
        Duration::from_secs(3600),
        NOW,
    )
    .unwrap();
    fresh.take_starting();
    fresh.start_download(media, false, &[], Instant::now()).unwrap();
    assert_eq!(requests(&actions(&mut fresh)).len(), 4);
}

#[test]
fn an_attachment_over_the_limit_is_refused_before_any_chunk_moves() {
    let dir = tempfile::tempdir().unwrap();
    let store = MediaStore::open(kith_core::store::Store::memory().side());
    let mut t: Transfers<u32> = Transfers::open(
        store,
        dir.path().join("sealed"),
        dir.path().join("downloads"),
        1000,
        Duration::from_secs(3600),
        NOW,
    )
    .unwrap();
    let (manifest, _) = manifest(2);
    let (from, _) = peer_of_user();
    t.incoming(&incoming(from, &manifest));
    assert!(t.take_starting().is_empty());
    let out = actions(&mut t);
    assert!(matches!(
        out.as_slice(),
        [MediaAction::Event(MediaEvent::Failed { reason: MediaFailure::TooLarge { .. }, .. })]
    ));
}

/// Sends `manifest` as message `message` to `to`, with its sealed copy on disk.
fn send(s: &mut Setup, to: UserId, manifest: &MediaManifest, sealed: &[Vec<u8>]) {
    std::fs::write(s.sealed.join(manifest.media_id.to_string()), sealed.concat()).unwrap();
    s.transfers.sent(MessageId([2; 16]), to, None, manifest, PathBuf::from("/f.bin"), NOW).unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_upload_sends_every_chunk_four_at_a_time_and_retries_what_the_relay_could_not_take() {
    let mut s = setup();
    let (to, _) = peer_of_user();
    let (manifest, sealed) = manifest(6);
    let media = manifest.media_id;
    send(&mut s, to, &manifest, &sealed);
    let (r1, r1_addr) = relay();
    s.transfers.stored_at(MessageId([2; 16]), vec![r1_addr]);
    let reads: Vec<u32> = actions(&mut s.transfers)
        .into_iter()
        .filter_map(|a| match a {
            MediaAction::Read { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![0, 1, 2, 3]);
    for index in 0..4u32 {
        s.transfers.chunk_read(media, r1, index, Ok(sealed[index as usize].clone()));
    }
    let puts: Vec<u32> = actions(&mut s.transfers)
        .into_iter()
        .filter_map(|a| match a {
            MediaAction::Put { index, hash, .. } => {
                assert_eq!(hash, manifest.chunk_hashes[index as usize]);
                Some(index)
            }
            _ => None,
        })
        .collect();
    assert_eq!(puts, vec![0, 1, 2, 3]);
    for index in 0..4u32 {
        s.transfers.put_sent(index, media, r1, index);
    }
    // Chunk 1 is refused for now (rate limit): retried after the back-off; 0 is stored.
    s.transfers.put_answered(
        1,
        Some(MediaResponse::Refused(MediaRefusal::RateLimited)),
        Instant::now(),
    );
    s.transfers.put_answered(0, Some(MediaResponse::Stored), Instant::now());
    let out = actions(&mut s.transfers);
    assert!(
        out.iter()
            .any(|a| matches!(a, MediaAction::Event(MediaEvent::Progress { chunks_done: 1, .. })))
    );
    assert!(!out.iter().any(|a| matches!(a, MediaAction::Read { .. })), "waiting for the back-off");
    tokio::time::advance(RETRY_FIRST).await;
    s.transfers.handle_timeout(&[], Instant::now());
    let reads: Vec<u32> = actions(&mut s.transfers)
        .into_iter()
        .filter_map(|a| match a {
            MediaAction::Read { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![1, 4]);
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_upload_resumes_after_a_restart_and_a_refusal_for_good_fails_it() {
    let mut s = setup();
    let (to, _) = peer_of_user();
    let (manifest, sealed) = manifest(2);
    let media = manifest.media_id;
    send(&mut s, to, &manifest, &sealed);
    let (r1, r1_addr) = relay();
    s.transfers.stored_at(MessageId([2; 16]), vec![r1_addr]);
    actions(&mut s.transfers);
    s.transfers.flush().unwrap();
    let mut reopened: Transfers<u32> = Transfers::open(
        s.transfers.store().clone(),
        s.sealed.clone(),
        s.transfers.downloads_dir().to_owned(),
        u64::MAX,
        Duration::from_secs(3600),
        NOW,
    )
    .unwrap();
    reopened.resume_uploads();
    let reads = actions(&mut reopened)
        .into_iter()
        .filter(|a| matches!(a, MediaAction::Read { .. }))
        .count();
    assert_eq!(reads, 2, "the upload starts over from the record");
    reopened.chunk_read(media, r1, 0, Ok(sealed[0].clone()));
    actions(&mut reopened);
    reopened.put_sent(1, media, r1, 0);
    reopened.put_answered(
        1,
        Some(MediaResponse::Refused(MediaRefusal::QuotaExceeded)),
        Instant::now(),
    );
    let out = actions(&mut reopened);
    assert!(out.iter().any(|a| matches!(
        a,
        MediaAction::Event(MediaEvent::Failed {
            reason: MediaFailure::Refused(MediaRefusal::QuotaExceeded),
            ..
        })
    )));
    // A sealed copy older than the retention is forgotten at the next start.
    let old: Transfers<u32> = Transfers::open(
        reopened.store().clone(),
        s.sealed.clone(),
        reopened.downloads_dir().to_owned(),
        u64::MAX,
        Duration::from_secs(1),
        NOW + 10_000,
    )
    .unwrap();
    assert!(old.list(None).unwrap().is_empty());
}

#[test]
fn what_we_serve_reports_progress_once_per_distinct_chunk() {
    let mut s = setup();
    let (to, _) = peer_of_user();
    let (manifest, sealed) = manifest(3);
    send(&mut s, to, &manifest, &sealed);
    assert!(s.transfers.catalog().outgoing.read().unwrap().contains_key(&manifest.media_id));
    for index in [0, 0, 2] {
        s.transfers.chunk_served(manifest.media_id, index);
    }
    let done: Vec<u32> = actions(&mut s.transfers)
        .into_iter()
        .filter_map(|a| match a {
            MediaAction::Event(MediaEvent::Progress { chunks_done, .. }) => Some(chunks_done),
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![1, 1, 2]);
}
