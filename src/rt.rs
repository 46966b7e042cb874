//! Two adapters between the gateway's connection tasks and tokio's scheduler, each sparing a
//! thread wake-up per request.
//!
//! With more than one worker thread, tokio answers two things by waking a parked worker (a
//! futex or an eventfd write, and the task may move to the other thread):
//!
//! - a task that wakes itself while it runs: it goes to the back of the queue and a second
//!   worker is woken to take it. A connection task does this a few times per request — hyper's
//!   request body is handed over by the same task that asked for it, and an exchange with an
//!   HTTP upstream answers into the queue its POST waits on. [`Inline`] polls such a future
//!   again at once instead.
//! - a timer that becomes the earliest in the wheel: the thread parked on the wheel is woken to
//!   sleep for less. hyper asks for a new request-head timer (`header_read_timeout`) each time
//!   it waits for a request head and drops it when the head arrives, so every request made one.
//!   [`ConnTimer`] keeps one tokio timer per connection and never moves it later.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// Rounds one poll of an [`Inline`] may take before it lets the runtime run other tasks.
const ROUNDS: usize = 8;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// A future whose wake-ups during its own poll are served by polling it again right away
    /// (up to [`ROUNDS`] times), not by rescheduling the task. Wake-ups from elsewhere go to
    /// the task as usual.
    pub struct Inline<F> {
        #[pin]
        future: F,
        flag: Arc<Flag>,
        waker: Waker,
    }
}

struct Flag {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While the future is being polled, noting it is enough: the poll goes round again.
        match self.state.compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

impl<F: Future> Inline<F> {
    pub fn new(future: F) -> Inline<F> {
        let flag = Arc::new(Flag { state: AtomicU8::new(IDLE), task: AtomicWaker::new() });
        Inline { future, waker: Waker::from(flag.clone()), flag }
    }
}

impl<F: Future> Future for Inline<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.flag.task.register(cx.waker());
        let mut inner = Context::from_waker(this.waker);
        for _ in 0..ROUNDS {
            this.flag.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(v) = this.future.as_mut().poll(&mut inner) {
                this.flag.state.store(IDLE, Ordering::Release);
                return Poll::Ready(v);
            }
            // Not woken while polled: whatever wakes it next goes to the task.
            if this.flag.state.compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Poll::Pending;
            }
        }
        // Still waking itself: the other tasks go first.
        this.flag.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// hyper's timer for one connection, and the timer of the request timeouts of its HTTP/1.1
/// handlers ([`timeout_at`]): one tokio timer, shared by every sleep, moved earlier when a
/// sleep needs it but never later. A sleep whose deadline is past the timer's waits on when
/// the timer fires (re-arming it then), so a connection re-arms its timer about once per its
/// shortest timeout however many requests it carries.
///
/// The tokio timer wakes one task, the last that polled it: only futures polled by the
/// connection's own task may use it (hyper's HTTP/1.1 dispatcher polls its handlers there;
/// HTTP/2 runs each stream in a task of its own).
#[derive(Clone, Default)]
pub struct ConnTimer(Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>);

struct LazySleep {
    deadline: tokio::time::Instant,
    timer: ConnTimer,
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep { deadline: tokio::time::Instant::now() + duration, timer: self.clone() })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep { deadline: deadline.into(), timer: self.clone() })
    }

    /// tokio's clock, as the deadlines are tokio's.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl hyper::rt::Sleep for LazySleep {}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut slot = self.timer.0.lock().unwrap_or_else(|e| e.into_inner());
        let timer = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier sleep: wait on for this one.
            timer.as_mut().reset(deadline);
        }
    }
}

/// `future`, or `None` when `deadline` comes first: timed on `timer` when there is one (a future
/// polled by that connection's own task), else on a tokio timer of its own.
pub async fn timeout_at<F: Future>(
    timer: Option<&ConnTimer>,
    deadline: tokio::time::Instant,
    future: F,
) -> Option<F::Output> {
    let Some(timer) = timer else { return tokio::time::timeout_at(deadline, future).await.ok() };
    let sleep = LazySleep { deadline, timer: timer.clone() };
    tokio::select! {
        biased;
        v = future => Some(v),
        () = sleep => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// A future that wakes itself `n` times before it is ready, counting its polls.
    struct WakesItself {
        n: usize,
        polls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Future for WakesItself {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.n == 0 {
                return Poll::Ready(());
            }
            self.n -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn self_wakes_are_polled_again_without_waking_the_task() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut f = Inline::new(WakesItself { n: 3, polls: polls.clone() });
        let woken = Arc::new(Count(Default::default()));
        let waker = Waker::from(woken.clone());
        assert_eq!(Pin::new(&mut f).poll(&mut Context::from_waker(&waker)), Poll::Ready(()));
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_runtime() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut f = Inline::new(WakesItself { n: 100, polls: polls.clone() });
        let woken = Arc::new(Count(Default::default()));
        let waker = Waker::from(woken.clone());
        assert_eq!(Pin::new(&mut f).poll(&mut Context::from_waker(&waker)), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), ROUNDS);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the task is woken to be polled again later");
    }

    #[tokio::test]
    async fn a_wake_from_elsewhere_reaches_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let task = tokio::spawn(Inline::new(rx));
        tokio::task::yield_now().await;
        std::thread::spawn(move || tx.send(7).unwrap());
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap(), Ok(7));
    }

    /// Paused time moves in whole milliseconds of the timer wheel.
    fn assert_at(start: tokio::time::Instant, expected: Duration) {
        let elapsed = start.elapsed();
        assert!(elapsed >= expected && elapsed < expected + Duration::from_millis(5), "{elapsed:?}, not {expected:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_end_at_their_own_deadlines_on_one_timer() {
        use futures_util::FutureExt;
        let timer = ConnTimer::default();
        let start = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(10)).await;
        assert_at(start, Duration::from_secs(10));
        // A later sleep re-arms the fired timer; an earlier one moves it back.
        let mut later = timer.sleep(Duration::from_secs(10));
        assert!((&mut later).now_or_never().is_none());
        timer.sleep(Duration::from_secs(3)).await;
        assert_at(start, Duration::from_secs(13));
        later.await;
        assert_at(start, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_outlasting_the_timer_waits_on_to_its_own_deadline() {
        let timer = ConnTimer::default();
        let start = tokio::time::Instant::now();
        // hyper drops a request-head sleep when the head arrives; the timer stays at its deadline.
        let early = timer.sleep(Duration::from_secs(1));
        assert!(tokio::time::timeout(Duration::from_millis(10), early).await.is_err());
        tokio::time::sleep(Duration::from_millis(500)).await;
        timer.sleep(Duration::from_secs(10)).await;
        assert_at(start, Duration::from_millis(10_510));
    }
}
