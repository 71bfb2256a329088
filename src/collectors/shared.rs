//! A kernel read that several collectors of one scrape need (the link list, the OVS
//! topology): the first to ask does it, the others take the same copy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::CollectError;

/// Older than this, a copy is not shared: concurrent collectors of one scrape start
/// within milliseconds of each other.
const SHARE_FOR: Duration = Duration::from_secs(2);

/// One read shared by up to eight readers (each a bit). A copy a reader has already had,
/// one read under another key (the OVS families after a module reload), or an old one is
/// never handed out again: the next ask reads afresh.
pub struct PerScrape<K, T> {
    cached: Mutex<Option<Cached<K, T>>>,
}

struct Cached<K, T> {
    at: Instant,
    key: K,
    value: Arc<T>,
    taken: u8,
}

impl<K, T> Default for PerScrape<K, T> {
    fn default() -> Self {
        PerScrape {
            cached: Mutex::new(None),
        }
    }
}

impl<K: PartialEq + Clone, T> PerScrape<K, T> {
    /// The copy for `reader` (0..8) in this scrape. The lock is held while reading, so
    /// another reader waits for this read instead of starting its own.
    pub fn get(
        &self,
        key: &K,
        reader: u8,
        read: impl FnOnce() -> Result<T, CollectError>,
    ) -> Result<Arc<T>, CollectError> {
        let bit = 1u8 << (reader & 7);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached
            .as_mut()
            .filter(|c| c.taken & bit == 0 && c.key == *key && c.at.elapsed() < SHARE_FOR)
        {
            c.taken |= bit;
            return Ok(c.value.clone());
        }
        Self::store(&mut cached, key, bit, read)
    }

    /// A fresh read outside any scrape; the next scrape's readers may share it.
    pub fn refresh(
        &self,
        key: &K,
        read: impl FnOnce() -> Result<T, CollectError>,
    ) -> Result<Arc<T>, CollectError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        Self::store(&mut cached, key, 0, read)
    }

    fn store(
        cached: &mut Option<Cached<K, T>>,
        key: &K,
        taken: u8,
        read: impl FnOnce() -> Result<T, CollectError>,
    ) -> Result<Arc<T>, CollectError> {
        let value = Arc::new(read()?);
        *cached = Some(Cached {
            at: Instant::now(),
            key: key.clone(),
            value: value.clone(),
            taken,
        });
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn each_reader_gets_one_copy_per_read() {
        let s: PerScrape<u16, u32> = PerScrape::default();
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(reads.get())
        };
        assert_eq!(*s.get(&1, 0, read).unwrap(), 1);
        assert_eq!(
            *s.get(&1, 1, read).unwrap(),
            1,
            "the other reader shares it"
        );
        assert_eq!(
            *s.get(&1, 0, read).unwrap(),
            2,
            "a reader never gets a copy twice"
        );
        assert_eq!(*s.get(&2, 1, read).unwrap(), 3, "another key reads afresh");
        assert_eq!(*s.refresh(&2, read).unwrap(), 4);
        assert_eq!(*s.get(&2, 1, read).unwrap(), 4, "a refresh is shared");
        assert!(s.get(&2, 1, || Err(CollectError::new("x"))).is_err());
    }
}
