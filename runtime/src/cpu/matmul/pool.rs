//! A small persistent thread pool for the matrix products, built for hundreds of short parallel
//! sections per token.
//!
//! A decoded token runs about 7 matrix products per layer, each a few to a few hundred
//! microseconds of work. Waking a sleeping thread and waiting on a condition variable costs tens
//! of microseconds per section, so instead the calling thread takes part as worker 0 and the
//! helpers spin on an epoch counter between sections; a job is published with two atomic
//! operations and no allocation or lock. Helpers that have spun for [`SPIN`] without a job park
//! on a condition variable, so an idle session costs no CPU.
//!
//! Helpers join a job only if it is still open: the caller closes it as soon as its own share is
//! done and then waits only for helpers that did join. A helper that was descheduled or parked
//! never delays a section; the work is handed out in chunks through an atomic counter, so the
//! threads that are running share all of it.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks: longer than the gaps between the matrix
/// products of a step, short enough that an idle session goes quiet at once.
const SPIN: Duration = Duration::from_millis(2);
/// After this long, an idle helper yields its core between checks, so that other threads (the
/// interpreter's other parallel kernels) on a busy machine are not starved by the spinning.
const SPIN_UNYIELDING: Duration = Duration::from_micros(50);

/// Spins (a few microseconds) after which the caller, waiting for helpers to finish a job,
/// yields its core between checks.
const YIELD_AFTER_SPINS: u32 = 1 << 12;

/// Set in [`Shared::state`] while no job accepts helpers; the other bits count the helpers
/// inside one.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// A job: called once by every thread that takes part, with its worker index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Keeps hot atomics on cache lines of their own, so the spinning helpers' reads do not slow the
/// caller's writes to its neighbours.
#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    /// Bumped once per job; helpers wait for it to change.
    epoch: Padded<AtomicU64>,
    /// [`CLOSED`] plus the number of helpers inside the current job.
    state: Padded<AtomicUsize>,
    /// The current job (a `Job` behind a thin pointer), valid while `state` is open or counts a
    /// helper.
    job: AtomicPtr<Job<'static>>,
    /// Set when the pool is dropped.
    stop: AtomicBool,
    /// Set when a job panicked on a helper; the caller panics in turn.
    panicked: AtomicBool,
    /// Parked helpers, and the lock and condition variable they park on.
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` workers: the calling thread and `threads - 1` helpers.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            epoch: Padded(AtomicU64::new(0)),
            state: Padded(AtomicUsize::new(CLOSED)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut helpers = Vec::new();
        for index in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            helpers.push(
                std::thread::Builder::new()
                    .name(format!("llamart-matmul-{index}"))
                    .spawn(move || helper(&shared, index))?,
            );
        }
        Ok(Pool { shared, helpers })
    }

    /// Workers, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `job(worker)` on the calling thread (worker 0) and on every helper that is awake in
    /// time, and returns when all of them have finished. `job` must hand out its work itself
    /// (through an atomic counter), since any subset of the helpers may take part.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.helpers.is_empty() {
            return job(0);
        }
        // SAFETY: the pointer is only dereferenced by helpers that joined while the job was open,
        // and this function does not return (ending the borrow) until they have all left.
        let erased: &Job<'static> = unsafe { std::mem::transmute::<&Job<'_>, &Job<'static>>(&job) };
        s.job.store(
            (erased as *const Job<'static>).cast_mut(),
            Ordering::Release,
        );
        // Opening keeps the count of helpers that tried to join the previous job and backed off.
        s.state.0.fetch_and(!CLOSED, Ordering::AcqRel);
        s.epoch.0.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().expect("never poisoned");
            s.wake.notify_all();
        }
        // Closes the job and waits for the helpers inside it even if `job` panics here, so none
        // of them is left holding a pointer into this frame.
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.state.0.fetch_or(CLOSED, Ordering::AcqRel);
                let mut spins = 0u32;
                while self.0.state.0.load(Ordering::Acquire) != CLOSED {
                    std::hint::spin_loop();
                    spins += 1;
                    // A helper still inside after this long was most likely descheduled (a
                    // busy machine): let it have this core rather than spin through its slice.
                    if spins > YIELD_AFTER_SPINS {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let close = Close(s);
        job(0);
        drop(close);
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a matrix product panicked on a worker thread");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.0.fetch_add(1, Ordering::SeqCst);
        drop(s.lock.lock().expect("never poisoned"));
        s.wake.notify_all();
        for h in self.helpers.drain(..) {
            // A helper only panics if a job did, and that job's caller has already seen it.
            let _ = h.join();
        }
    }
}

fn helper(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while s.epoch.0.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            if !spins.is_multiple_of(256) {
                continue;
            }
            let idle = started.elapsed();
            if idle > SPIN {
                let mut guard = s.lock.lock().expect("never poisoned");
                s.parked.fetch_add(1, Ordering::SeqCst);
                // Re-checked under the lock: `run` bumps the epoch before it looks for parked
                // helpers (both SeqCst), and notifies under the lock, so no wake-up is lost.
                while s.epoch.0.load(Ordering::SeqCst) == seen {
                    guard = s.wake.wait(guard).expect("never poisoned");
                }
                s.parked.fetch_sub(1, Ordering::SeqCst);
            } else if idle > SPIN_UNYIELDING {
                std::thread::yield_now();
            }
        }
        seen = s.epoch.0.load(Ordering::Acquire);
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        if s.state.0.fetch_add(1, Ordering::AcqRel) & CLOSED == 0 {
            // SAFETY: the job was open when this helper was counted in, so the caller is still
            // inside `run` and the pointer is the current job's.
            let job = unsafe { &*s.job.load(Ordering::Acquire) };
            // A panic must not skip the count below (the caller would wait for ever); it is
            // reported to the caller instead, after the default hook has printed it.
            let run = std::panic::AssertUnwindSafe(|| job(index));
            if std::panic::catch_unwind(run).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.state.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_done_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for round in 0..2000 {
                let next = AtomicUsize::new(0);
                let done: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|_| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= done.len() {
                        break;
                    }
                    done[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    done.iter().all(|d| d.load(Ordering::Relaxed) == 1),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn a_panic_on_a_helper_reaches_the_caller() {
        let pool = Pool::new(2).unwrap();
        // The helper may miss a job (it only joins open ones); it takes part in one of these.
        let surfaced = (0..100).any(|_| {
            let run = std::panic::AssertUnwindSafe(|| {
                pool.run(&|worker| {
                    if worker == 1 {
                        panic!("test panic on a helper");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                })
            });
            std::panic::catch_unwind(run).is_err()
        });
        assert!(surfaced);
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        pool.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert!(count.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn parked_helpers_wake_up_for_work() {
        let pool = Pool::new(2).unwrap();
        std::thread::sleep(SPIN * 3);
        // The helper is parked by now; give it work only it can finish, so `run` depends on it.
        let helped = AtomicUsize::new(0);
        let start = Instant::now();
        while helped.load(Ordering::Relaxed) == 0 && start.elapsed() < Duration::from_secs(10) {
            pool.run(&|worker| {
                if worker == 1 {
                    helped.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        assert!(helped.load(Ordering::Relaxed) > 0);
    }
}
