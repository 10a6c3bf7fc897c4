//! The wall clock for removing files by age (audit segments, unreferenced list copies): never
//! ahead of the wall time at a starting point plus the time since on the boot clock.
//!
//! A forward step of the system clock (a bad NTP source, a mistyped `date`) would otherwise
//! make every file look old at once and have retention delete what it is there to keep; a
//! backward step only keeps files longer. `CLOCK_BOOTTIME` is monotonic and counts a suspend,
//! so one neither holds removal back nor reads as a step. It guards a running process only: a
//! clock already wrong at the starting point is taken as it is. The price: after a legitimate
//! forward correction (a clock set late after boot), files are kept that much longer, until
//! the next start.

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime},
};

/// A wall clock this far ahead of the boot clock is taken for a step (NTP slews smaller
/// differences away; it steps only past 128 ms, and by the whole offset).
pub const CLOCK_STEP: Duration = Duration::from_secs(60);

/// The starting point: the wall clock and the boot clock read together.
#[derive(Debug, Clone, Copy)]
pub struct SteadyWall {
    pub(crate) wall_at_start: SystemTime,
    boot_at_start: Duration,
}

impl SteadyWall {
    pub fn start() -> Self {
        Self {
            wall_at_start: SystemTime::now(),
            boot_at_start: since_boot(),
        }
    }

    /// The wall clock as age-based removal reads it, and how far the real one is ahead of it.
    pub fn now(&self) -> (SystemTime, Duration) {
        let wall = SystemTime::now();
        let since_start = since_boot().saturating_sub(self.boot_at_start);
        let read = Self::reading(wall, self.wall_at_start, since_start);
        (read, wall.duration_since(read).unwrap_or_default())
    }

    pub fn reading(
        wall: SystemTime,
        wall_at_start: SystemTime,
        since_start: Duration,
    ) -> SystemTime {
        wall_at_start
            .checked_add(since_start)
            .map_or(wall, |expected| wall.min(expected))
    }
}

/// The process's own, from its first use (a server's first list snapshot, at its start).
pub fn process() -> &'static SteadyWall {
    static PROCESS: LazyLock<SteadyWall> = LazyLock::new(SteadyWall::start);
    &PROCESS
}

/// Time since boot, suspend included.
fn since_boot() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_step_is_not_followed() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let year = Duration::from_secs(365 * 86_400);
        let ten = Duration::from_secs(10);
        assert_eq!(
            SteadyWall::reading(start + year, start, ten),
            start + ten,
            "a year's step forward ten seconds after start"
        );
        assert_eq!(
            SteadyWall::reading(start + ten, start, ten),
            start + ten,
            "no step"
        );
        assert_eq!(
            SteadyWall::reading(start, start, ten),
            start,
            "a step back keeps files longer"
        );
    }
}
