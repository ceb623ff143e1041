//! [`Padded`]: a value alone on its pair of cache lines.

/// A value alone on its pair of cache lines (the adjacent-line prefetcher
/// pulls lines in pairs), so that writes to it by one core do not make other
/// cores miss on their neighbouring data, and the other way round.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
