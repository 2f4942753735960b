//! Reply tokens: each component names the engine inputs it is waiting to hear about with
//! tokens from its own space (its tag in the top byte), so that the driver hands every
//! [`Reply`](kith_core::engine::Reply) back to the component that asked, without a table.

use kith_core::engine::ReplyToken;

/// A source of reply tokens for one component.
#[derive(Debug)]
pub(crate) struct Tokens {
    tag: u64,
    next: u64,
}

/// The top byte of a token: its component.
const TAG_SHIFT: u32 = 56;

impl Tokens {
    /// Tokens tagged `tag` (one tag per component).
    pub(crate) const fn new(tag: u8) -> Self {
        Self { tag: (tag as u64) << TAG_SHIFT, next: 0 }
    }

    /// A fresh token (2⁵⁶ per component before they would repeat).
    pub(crate) fn next(&mut self) -> ReplyToken {
        self.next = (self.next + 1) & ((1 << TAG_SHIFT) - 1);
        ReplyToken(self.tag | self.next)
    }

    /// Whether `token` came from here.
    pub(crate) fn owns(&self, token: ReplyToken) -> bool {
        token.0 >> TAG_SHIFT == self.tag >> TAG_SHIFT
    }
}

/// The tags of the node's components.
pub(crate) mod tag {
    /// Direct delivery: envelopes received on `/kith/envelope/1`.
    pub(crate) const DELIVERY: u8 = 1;
    /// The mailbox client: envelopes fetched from or pushed by relays.
    pub(crate) const MAILBOX: u8 = 2;
    /// Prekey requests we serve.
    pub(crate) const PREKEYS: u8 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_recognised_by_their_component() {
        let (mut a, mut b) = (Tokens::new(tag::DELIVERY), Tokens::new(tag::MAILBOX));
        let (x, y) = (a.next(), b.next());
        assert_ne!(x, y);
        assert_ne!(a.next(), x);
        assert!(a.owns(x) && !a.owns(y) && b.owns(y) && !b.owns(x));
    }
}
