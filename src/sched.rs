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
    /// once (the audit writer).
    Batch,
}

/// Puts the calling thread in `class`. Returns false if the kernel refused (e.g. a seccomp
/// filter): the thread then keeps its class, which is only slower for the queries, not wrong.
#[allow(unsafe_code)]
pub fn enter(class: Class) -> bool {
    let policy = match class {
        Class::Idle => libc::SCHED_IDLE,
        Class::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call; `0` names the
    // calling thread.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
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
}
