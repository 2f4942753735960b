//! Every wire decoder on arbitrary bytes: no panic, bounded allocation, and whatever decodes
//! re-encodes to the same bytes (one encoding per value).

#![no_main]

use kith_protocol::codec::{Frame, decode, encode};
use kith_protocol::content::Content;
use kith_protocol::direct::{DeliveryAcks, EnvelopeBatch};
use kith_protocol::envelope::{Envelope, GroupEnvelope};
use kith_protocol::mailbox::{MailboxRequest, MailboxResponse};
use kith_protocol::media::{MediaRequest, MediaResponse};
use kith_protocol::prekey::{PreKeyRequest, PreKeyResponse, UserRecord, UserRecordV2, UserRecordV3};
use libfuzzer_sys::fuzz_target;

fn one<F: Frame>(bytes: &[u8]) {
    if let Ok(frame) = decode::<F>(bytes) {
        assert_eq!(encode(&frame).expect("a decoded frame re-encodes"), bytes);
    }
}

fuzz_target!(|bytes: &[u8]| {
    one::<Envelope>(bytes);
    one::<GroupEnvelope>(bytes);
    one::<Content>(bytes);
    one::<EnvelopeBatch>(bytes);
    one::<DeliveryAcks>(bytes);
    one::<PreKeyRequest>(bytes);
    one::<PreKeyResponse>(bytes);
    one::<UserRecord>(bytes);
    one::<UserRecordV2>(bytes);
    one::<UserRecordV3>(bytes);
    one::<MailboxRequest>(bytes);
    one::<MailboxResponse>(bytes);
    one::<MediaRequest>(bytes);
    one::<MediaResponse>(bytes);
});
