//! Record logits from window logits (`--long-text chunks`): a record read as several windows
//! gets the mean (`--chunk-pool mean`) or the class-wise max (`max`: the window that speaks most
//! for a class decides it) of its windows' logits. Composed from proved kernels: a GEMM with a
//! 0/1 matrix lays the windows out as [records, most windows, classes] (each value copied
//! exactly), and the sequence pool (kernels/seqpool.cu) pools over each record's real windows.
//! Backward is the pool's backward, then the transposed GEMM. Deterministic: no atomics.

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::ops::{self, seqpool, Gemm};

pub use crate::ops::seqpool::Pool;

pub struct WindowPool {
    /// [records x most, windows]: 1 where a padded slot holds a window.
    scatter: Buffer<f32>,
    lengths: Buffer<i32>,
    /// The winning window per (record, class) of the last max forward.
    argmax: Option<Buffer<i32>>,
    pool: Pool,
    records: usize,
    windows: usize,
    most: usize,
}

impl WindowPool {
    /// Pools `counts[r]` consecutive windows per record; None when every record is one window
    /// (the logits are the records' already). `rows` is the batch's window count.
    pub fn new(
        dev: &Device,
        counts: &[usize],
        rows: usize,
        pool: Pool,
    ) -> Result<Option<WindowPool>> {
        if counts.iter().sum::<usize>() != rows || counts.contains(&0) {
            return Err(Error::Invalid(format!(
                "{} windows in the batch; the records' window counts ({} records) sum to {} and must each be at least 1",
                rows,
                counts.len(),
                counts.iter().sum::<usize>()
            )));
        }
        if counts.iter().all(|&n| n == 1) {
            return Ok(None);
        }
        if pool == Pool::Last {
            return Err(Error::Invalid("windows pool by mean or max".into()));
        }
        let (records, windows) = (counts.len(), rows);
        let most = counts.iter().copied().max().unwrap_or(1);
        let mut scatter = vec![0.0f32; records * most * windows];
        let mut first = 0;
        for (r, &n) in counts.iter().enumerate() {
            for k in 0..n {
                scatter[(r * most + k) * windows + first + k] = 1.0;
            }
            first += n;
        }
        let lengths: Vec<i32> = counts.iter().map(|&n| n as i32).collect();
        Ok(Some(WindowPool {
            scatter: dev.upload(&scatter, "window layout")?,
            lengths: dev.upload(&lengths, "windows per record")?,
            argmax: None,
            pool,
            records,
            windows,
            most,
        }))
    }

    pub fn records(&self) -> usize {
        self.records
    }

    /// [windows, classes] -> [records, classes].
    pub fn forward(&mut self, window_logits: &Buffer<f32>, classes: usize) -> Result<Buffer<f32>> {
        let dev = window_logits.device().clone();
        let slots = self.records * self.most;
        let mut padded = dev.alloc::<f32>(slots * classes, "windows laid out per record")?;
        let g = Gemm::new(slots, classes, self.windows, false, false);
        ops::gemm(&g, &self.scatter, window_logits, &mut padded, None)?;
        let mut out = dev.alloc::<f32>(self.records * classes, "record logits")?;
        let mut argmax = dev.alloc::<i32>(self.records * classes, "winning window")?;
        seqpool::forward(
            &padded,
            &self.lengths,
            &mut out,
            &mut argmax,
            self.most,
            classes,
            self.pool,
            1,
        )?;
        self.argmax = Some(argmax);
        Ok(out)
    }

    /// d record logits [records, classes] -> d window logits [windows, classes].
    pub fn backward(&self, d_records: &Buffer<f32>, classes: usize) -> Result<Buffer<f32>> {
        let argmax = self
            .argmax
            .as_ref()
            .ok_or_else(|| Error::Invalid("window pool: backward before forward".into()))?;
        let dev = d_records.device().clone();
        let slots = self.records * self.most;
        let mut d_padded = dev.alloc::<f32>(slots * classes, "d windows laid out")?;
        seqpool::backward(
            d_records,
            &self.lengths,
            argmax,
            &mut d_padded,
            self.most,
            classes,
            self.pool,
            1,
        )?;
        let mut out = dev.alloc::<f32>(self.windows * classes, "window dlogits")?;
        let g = Gemm::new(self.windows, classes, slots, true, false);
        ops::gemm(&g, &self.scatter, &d_padded, &mut out, None)?;
        Ok(out)
    }
}

/// `--chunk-pool` unless given: the mean (on the long-record set, 3 seeds, max did no better:
/// README, "Long records").
pub const DEFAULT_CHUNK_POOL: Pool = Pool::Mean;

/// `--chunk-pool`: how a record's windows pool their logits.
pub fn chunk_pool_from_name(name: &str) -> Result<Pool> {
    match name {
        "mean" => Ok(Pool::Mean),
        "max" => Ok(Pool::Max),
        other => Err(Error::Invalid(format!(
            "no chunk pool `{other}`: mean or max"
        ))),
    }
}

pub fn chunk_pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Max => "max",
        _ => "mean",
    }
}
