//! Scheduling classes for the background threads that share the cores with the query workers
//! (the reload builder, the audit writer). It owns the one system call; the threads decide
//! which class they need.

/// Scheduling classes a background thread can take (Linux, per thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// SCHED_IDLE: runs only on CPU time no other thread wants, and any waking thread preempts
    /// it. For work that may wait as long as the machine is busy (a reload).
    Idle,
    /// SCHED_BATCH: a normal share of the CPU, but its wake-ups never preempt a running thread;
    /// it waits for the next scheduling point. For work that must keep up but need not run at
    /// once (the audit writer, a reload that waited too long as `Idle`).
    Batch,
}

/// A thread's kernel id (TID), for moving it to another class from a different thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadTid(libc::pid_t);

impl ThreadTid {
    /// The calling thread's id.
    #[allow(unsafe_code)]
    pub fn current() -> Self {
        // SAFETY: `gettid` takes no arguments and cannot fail.
        Self(unsafe { libc::gettid() })
    }
}

/// Puts the calling thread in `class`. Returns false if the kernel refused (e.g. a seccomp
/// filter): the thread then keeps its class, which is only slower for the queries, not wrong.
pub fn enter(class: Class) -> bool {
    set(0, class)
}

/// Puts thread `thread` (which must still be running) in `class`; false if the kernel
/// refused or the thread has ended.
pub fn move_thread(thread: ThreadTid, class: Class) -> bool {
    set(thread.0, class)
}

#[allow(unsafe_code)]
fn set(tid: libc::pid_t, class: Class) -> bool {
    let policy = match class {
        Class::Idle => libc::SCHED_IDLE,
        Class::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call; `tid` is a
    // plain integer (`0`: the calling thread), checked by the kernel.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_enters_the_class_asked_for() {
        let policy = |class| {
            std::thread::spawn(move || {
                assert!(enter(class));
                #[allow(unsafe_code)]
                // SAFETY: a plain call with `0`, the calling thread, and no pointers.
                unsafe {
                    libc::sched_getscheduler(0)
                }
            })
            .join()
            .unwrap()
        };
        assert_eq!(policy(Class::Batch), libc::SCHED_BATCH);
        assert_eq!(policy(Class::Idle), libc::SCHED_IDLE);
    }

    #[test]
    fn another_thread_can_be_moved() {
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (go_sender, go) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            assert!(enter(Class::Idle));
            tid_sender.send(ThreadTid::current()).unwrap();
            go.recv().unwrap();
            #[allow(unsafe_code)]
            // SAFETY: a plain call with `0`, the calling thread, and no pointers.
            unsafe {
                libc::sched_getscheduler(0)
            }
        });
        let tid = tid.recv().unwrap();
        assert!(move_thread(tid, Class::Batch));
        go_sender.send(()).unwrap();
        assert_eq!(thread.join().unwrap(), libc::SCHED_BATCH);
    }
}
