//! Moderating streams as they flow: SSE framing and the guard that holds back only what could
//! still become a match, releases the rest at once, and stops generation on a violation.

pub mod guard;
pub mod sse;
pub mod template;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use guard::{EndVerdict, EventCodec, Guard, StopReason, StreamFinding};
use sse::SseFramer;

/// Receives what a guarded stream decided, as it happens (audit records, the request log).
pub trait Reporter: Send + 'static {
    fn report<'a>(
        &'a mut self,
        findings: Vec<StreamFinding>,
        stop: Option<&'a StopReason>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

    /// The stream is over (ended, stopped, failed, or the client left); called once.
    fn done(&mut self, _held_at_end: usize) {}

    /// The verdict on a whole answer before its end reaches the client, for a guard that holds
    /// its end (`Guard::hold_end_for_verdict`): each channel's released text. Default: pass.
    fn verdict(
        &mut self,
        _texts: Vec<(guard::ChannelKey, String)>,
    ) -> Pin<Box<dyn Future<Output = EndVerdict> + Send + '_>> {
        Box::pin(async { EndVerdict::Pass(Vec::new()) })
    }

    /// Characters released between two checks of the answer while it flows
    /// (`check_so_far`); 0: none. Read once, when the stream starts.
    fn check_every(&self) -> usize {
        0
    }

    /// A check of the answer so far, run beside the stream (it owns what it needs: the stream
    /// goes on and the reporter keeps reporting while it runs). Only its `Block` counts; a pass
    /// or a failure leaves the decision to the check at the end.
    fn check_so_far(&mut self, _texts: Vec<(guard::ChannelKey, String)>) -> Option<CheckFuture> {
        None
    }
}

/// A check of a streamed answer so far (`Reporter::check_so_far`).
pub type CheckFuture = Pin<Box<dyn Future<Output = EndVerdict> + Send + 'static>>;

/// What the guarded body's loop woke up for.
enum Woke<T> {
    Upstream(Option<T>),
    Checked(EndVerdict),
}

/// Why an upstream body ended early, as the guarded body needs to know it.
pub trait Fault {
    fn message(&self) -> &'static str;
}

struct State<C: EventCodec, S, R: Reporter> {
    upstream: Option<Pin<Box<S>>>,
    framer: SseFramer,
    guard: Guard<C>,
    reporter: R,
    done: bool,
    /// The check of the answer so far that is running, if any.
    check: Option<CheckFuture>,
    /// Characters between checks while the answer flows (0: none), and where the last began.
    check_every: usize,
    checked_at: usize,
}

impl<C: EventCodec, S, R: Reporter> Drop for State<C, S, R> {
    fn drop(&mut self) {
        self.reporter.done(self.guard.held_bytes());
    }
}

/// The client-facing body of a moderated SSE response. Upstream chunks are framed into events,
/// judged by the guard, and what may be released is sent at once, one write per upstream chunk.
/// On a blocking finding the upstream body is dropped on the spot, which closes the upstream
/// request and stops generation.
pub fn guarded_body<C, S, E, R>(
    upstream: S,
    guard: Guard<C>,
    reporter: R,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    C: EventCodec,
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Fault + Send + 'static,
    R: Reporter,
{
    let check_every = reporter.check_every();
    let state = State {
        upstream: Some(Box::pin(upstream)),
        framer: SseFramer::new(),
        guard,
        reporter,
        done: false,
        check: None,
        check_every,
        checked_at: 0,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let mut out = Vec::new();
            let up = st.upstream.as_mut()?;
            let woke = match st.check.as_mut() {
                None => Woke::Upstream(up.next().await),
                Some(check) => tokio::select! {
                    biased;
                    verdict = check => Woke::Checked(verdict),
                    next = up.next() => Woke::Upstream(next),
                },
            };
            let arrived = Instant::now();
            let next = match woke {
                Woke::Upstream(next) => next,
                Woke::Checked(EndVerdict::Block(category, findings)) => {
                    st.check = None;
                    st.guard.block(category, findings, &mut out);
                    None
                }
                Woke::Checked(_) => {
                    // Passed, or could not be made: the check at the end decides. Read on.
                    st.check = None;
                    continue;
                }
            };
            match next {
                _ if st.guard.is_done() => {}
                Some(Ok(chunk)) => match st.framer.push(&chunk) {
                    Ok(events) => {
                        for ev in events {
                            st.guard.on_event(ev, &mut out);
                            if st.guard.is_done() {
                                break;
                            }
                        }
                    }
                    Err(_) => st.guard.on_fault(
                        "the model server sent an event stream that is not UTF-8",
                        &mut out,
                    ),
                },
                Some(Err(fault)) => {
                    if let Ok(Some(ev)) = st.framer.finish() {
                        st.guard.on_event(ev, &mut out);
                    }
                    st.guard.on_fault(fault.message(), &mut out);
                }
                None => {
                    match st.framer.finish() {
                        Ok(Some(ev)) => st.guard.on_event(ev, &mut out),
                        Ok(None) => {}
                        Err(_) => st.guard.on_fault(
                            "the model server sent an event stream that is not UTF-8",
                            &mut out,
                        ),
                    }
                    st.guard.on_end(&mut out);
                }
            }
            if st.guard.awaiting_verdict() {
                // The whole answer is checked now: a check of part of it is moot.
                st.check = None;
                let texts = st.guard.released_texts();
                let verdict = st.reporter.verdict(texts).await;
                st.guard.conclude(verdict, &mut out);
            }
            if st.guard.is_done() {
                // Close the upstream request now: this is what stops generation.
                st.upstream = None;
                if st.guard.stopped().is_some() {
                    crate::metrics::metrics()
                        .stop_to_close
                        .observe(arrived.elapsed().as_secs_f64());
                }
                st.done = true;
            }
            if st.check_every > 0 && st.check.is_none() && !st.guard.is_done() {
                let released = st.guard.released_chars();
                if released >= st.checked_at + st.check_every {
                    st.checked_at = released;
                    st.check = st.reporter.check_so_far(st.guard.released_texts());
                }
            }
            let findings = st.guard.take_findings();
            if !findings.is_empty() || st.guard.stopped().is_some() {
                let stop = st.guard.stopped().cloned();
                st.reporter.report(findings, stop.as_ref()).await;
            }
            if !out.is_empty() {
                let bytes = if out.len() == 1 {
                    out.pop().unwrap_or_default()
                } else {
                    let mut b = BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
                    for o in out {
                        b.extend_from_slice(&o);
                    }
                    b.freeze()
                };
                return Some((Ok(bytes), st));
            }
        }
    })
}
