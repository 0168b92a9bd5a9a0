//! A connection's close request: asked for once (the first request wins) by whoever ends the
//! connection, and awaited by its reader and its writer.
//!
//! A `tokio::sync::watch` channel did this before, but its shared state is ~360 bytes (eight
//! `Notify`s, to spread many receivers' wake-ups), paid by every connection for one value that is
//! set at most once and has two waiters. This is a `OnceLock` and one `Notify`: ~80 bytes.

use std::sync::OnceLock;

use tokio::sync::Notify;

use super::room::CloseSpec;

#[derive(Default)]
pub struct CloseSignal {
    spec: OnceLock<CloseSpec>,
    notify: Notify,
}

impl CloseSignal {
    /// Asks for the close; ignored if one was asked for already.
    pub fn request(&self, spec: CloseSpec) {
        if self.spec.set(spec).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// The close asked for, if any.
    pub fn get(&self) -> Option<CloseSpec> {
        self.spec.get().copied()
    }

    /// Resolves once a close is asked for (at once if it was already).
    pub async fn requested(&self) -> CloseSpec {
        loop {
            // Created before the check: a `Notified` receives every `notify_waiters` from its
            // creation on, so a request between the check and the wait is not missed.
            let notified = self.notify.notified();
            if let Some(spec) = self.get() {
                return spec;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const A: CloseSpec = CloseSpec {
        code: 4008,
        reason: "a",
    };
    const B: CloseSpec = CloseSpec {
        code: 1000,
        reason: "b",
    };

    #[tokio::test]
    async fn the_first_request_wins_and_wakes_every_waiter() {
        let close = Arc::new(CloseSignal::default());
        assert_eq!(close.get(), None);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let close = close.clone();
                tokio::spawn(async move { close.requested().await })
            })
            .collect();
        tokio::task::yield_now().await;
        close.request(A);
        close.request(B);
        for w in waiters {
            assert_eq!(w.await.unwrap(), A);
        }
        assert_eq!(close.get(), Some(A));
        // Asked for before the wait: resolves at once.
        assert_eq!(close.requested().await, A);
    }
}
