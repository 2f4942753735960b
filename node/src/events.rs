//! A subscription to a node's events that cannot lose one silently.
//!
//! Events fan out to every subscriber through a bounded buffer ([`EVENT_BUFFER`] events), so a
//! subscriber that stops reading never slows the node down. One that falls more than a buffer
//! behind loses the oldest events it had not read, and is told so: its next event is
//! [`NodeEvent::Lagged`], with how many it missed and the sequence number of the last message
//! it did see. Everything an event announces is in the store, so the subscriber re-reads what
//! it shows (the history of its conversations after that sequence number) and goes on.
//!
//! [`EVENT_BUFFER`]: crate::defaults::EVENT_BUFFER

use kith_core::engine::Event;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::NodeEvent;

/// The node stopped: no event will come any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node stopped")]
pub struct EventsClosed;

/// A node's events from the moment of [`Node::subscribe`](crate::Node::subscribe) on.
#[derive(Debug)]
pub struct Events {
    inner: broadcast::Receiver<NodeEvent>,
    /// The highest sequence number of a message event handed out.
    last_seq: Option<u64>,
}

impl Events {
    pub(crate) fn new(inner: broadcast::Receiver<NodeEvent>) -> Self {
        Self { inner, last_seq: None }
    }

    /// The next event; [`NodeEvent::Lagged`] if this subscriber fell behind and lost some.
    pub async fn recv(&mut self) -> Result<NodeEvent, EventsClosed> {
        match self.inner.recv().await {
            Ok(event) => Ok(self.seen(event)),
            Err(RecvError::Lagged(missed)) => Ok(self.lagged(missed)),
            Err(RecvError::Closed) => Err(EventsClosed),
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<NodeEvent>, EventsClosed> {
        match self.inner.try_recv() {
            Ok(event) => Ok(Some(self.seen(event))),
            Err(TryRecvError::Lagged(missed)) => Ok(Some(self.lagged(missed))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Closed) => Err(EventsClosed),
        }
    }

    fn seen(&mut self, event: NodeEvent) -> NodeEvent {
        if let NodeEvent::Engine(Event::Message(message)) = &event {
            self.last_seq = self.last_seq.max(Some(message.seq));
        }
        event
    }

    fn lagged(&self, missed: u64) -> NodeEvent {
        NodeEvent::Lagged { missed, after_seq: self.last_seq }
    }
}

#[cfg(test)]
mod tests {
    use kith_core::engine::Event;
    use kith_core::model::{Direction, Message, MessageStatus};
    use kith_protocol::{MessageId, UserId};

    use super::*;

    fn message(seq: u64) -> NodeEvent {
        NodeEvent::Engine(Event::Message(Box::new(Message {
            id: MessageId([u8::try_from(seq).unwrap(); 16]),
            peer: UserId([1; 32]),
            group: None,
            direction: Direction::Incoming,
            sent_at: 0,
            stored_at: 0,
            body: None,
            status: MessageStatus::Delivered,
            reactions: Vec::new(),
            edited_at: None,
            seq,
            receipts: Vec::new(),
        })))
    }

    fn seq(event: &NodeEvent) -> Option<u64> {
        match event {
            NodeEvent::Engine(Event::Message(m)) => Some(m.seq),
            _ => None,
        }
    }

    /// Issue 15: a subscriber that falls behind is told how many events it lost and from
    /// which message on to re-read, then gets the rest in order.
    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed() {
        let (tx, rx) = broadcast::channel(4);
        let mut events = Events::new(rx);
        tx.send(message(1)).unwrap();
        assert_eq!(seq(&events.recv().await.unwrap()), Some(1));
        for s in 2..=11 {
            tx.send(message(s)).unwrap();
        }
        // 2..=7 fell out of the buffer of 4.
        match events.recv().await.unwrap() {
            NodeEvent::Lagged { missed, after_seq } => {
                assert_eq!(missed, 6);
                assert_eq!(after_seq, Some(1), "re-read after the last message it saw");
            }
            other => panic!("expected Lagged, got {other:?}"),
        }
        for s in 8..=11 {
            assert_eq!(seq(&events.recv().await.unwrap()), Some(s));
        }
        assert!(events.try_recv().unwrap().is_none());
        drop(tx);
        assert_eq!(events.recv().await.unwrap_err(), EventsClosed);
    }

    /// A subscriber that lags before it saw any message is told to re-read everything.
    #[test]
    fn lagging_before_any_message_says_re_read_all() {
        let (tx, rx) = broadcast::channel(2);
        let mut events = Events::new(rx);
        for s in 1..=5 {
            tx.send(message(s)).unwrap();
        }
        match events.try_recv().unwrap() {
            Some(NodeEvent::Lagged { missed: 3, after_seq: None }) => {}
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert_eq!(events.try_recv().unwrap().as_ref().and_then(seq), Some(4));
    }
}
