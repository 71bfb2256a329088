//! Counters the exporter widens or accumulates itself: when does a smaller reading mean
//! the counter wrapped, and when that it started over?

/// How far below 2^32 a 32-bit counter must have been, and how small it must be now, for
/// a decrease to be read as a wrap. A kernel per-CPU statistic that grows by a quarter of
/// its range between two scrapes is not plausible; a counter that starts over (the module
/// was reloaded, another source took over) usually reads far below its last value.
const WRAP_MARGIN: u32 = 1 << 30;

/// The increase of a 32-bit kernel counter from `last` to `now`, or `None` when it
/// started over: a decrease is a wrap only when `last` was near 2^32 and `now` is small.
pub fn u32_increase(last: u32, now: u32) -> Option<u64> {
    if now >= last {
        Some(u64::from(now - last))
    } else if last >= u32::MAX - WRAP_MARGIN && now < WRAP_MARGIN {
        Some(u64::from(now.wrapping_sub(last)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decrease_is_a_wrap_only_near_the_top() {
        assert_eq!(u32_increase(5, 9), Some(4));
        assert_eq!(u32_increase(u32::MAX - 5, 10), Some(16));
        // nf_conntrack reloaded: 8,192 invalid before, 10 after.
        assert_eq!(u32_increase(8_192, 10), None);
        assert_eq!(u32_increase(u32::MAX - 5, u32::MAX - 6), None);
        assert_eq!(u32_increase(3_000_000_000, 1 << 31), None);
    }
}
