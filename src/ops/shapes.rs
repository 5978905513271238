//! The checks every op makes before it launches: buffers large enough for the shapes given, and
//! sizes that fit the kernels' 32-bit indices.

use crate::device::{Buffer, Elem};
use crate::error::{Error, Result};

/// Fails unless `buf` holds at least `needed` elements.
pub(super) fn need<T: Elem>(op: &str, what: &str, buf: &Buffer<T>, needed: usize) -> Result<()> {
    if buf.len() < needed {
        return Err(Error::Invalid(format!(
            "{op}: `{what}` holds {} elements, the shapes given need {needed}",
            buf.len()
        )));
    }
    Ok(())
}

/// Converts a size to the kernels' `int`, refusing what does not fit.
pub(super) fn to_i32(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Invalid(format!("{op}: {what} = {v} does not fit a 32-bit index")))
}
