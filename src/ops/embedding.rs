//! Embedding gathers and their deterministic scatter (kernels/embedding.cu).
use super::shapes::need;
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::{Error, Result};

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::for_elements(n, 256, 4096)
}

/// Refuses ids outside 0..rows, naming the first offender.
pub fn check_ids(ids: &[i32], rows: usize, what: &str) -> Result<()> {
    match ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id as usize >= rows)
    {
        Some((i, &id)) => Err(Error::Invalid(format!(
            "{what} {id} at position {i} is outside 0..{rows}"
        ))),
        None => Ok(()),
    }
}

/// out[i, :] = table[ids[i], :] (ids already on the device and checked).
pub fn forward(
    ids: &Buffer<i32>,
    table: &Buffer<f32>,
    out: &mut Buffer<f32>,
    dim: usize,
) -> Result<()> {
    let n = ids.len() * dim;
    need("embedding_forward", "out", out, n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        ids.into(),
        table.into(),
        (&*out).into(),
        Arg::I32(ids.len() as i32),
        Arg::I32(dim as i32),
    ];
    table.device().launch("embedding_forward", cfg(n), &args)
}

/// dtable = the per-row sums of dout over the tokens holding each id: positions are grouped by
/// id on the host in a fixed order, then summed on the device without atomics. Every row of
/// dtable is written (0 where no token uses it). Tokens holding `padding_idx` add nothing, as
/// with torch.nn.Embedding(padding_idx=...).
pub fn backward(
    ids: &[i32],
    dout: &Buffer<f32>,
    dtable: &mut Buffer<f32>,
    dim: usize,
    padding_idx: Option<i32>,
) -> Result<()> {
    need("embedding_backward", "dout", dout, ids.len() * dim)?;
    let dev = dout.device().clone();
    let mut order: Vec<i32> = (0..ids.len() as i32)
        .filter(|&i| Some(ids[i as usize]) != padding_idx)
        .collect();
    order.sort_by_key(|&i| (ids[i as usize], i));
    let (mut starts, mut rows) = (vec![], vec![]);
    for (k, &i) in order.iter().enumerate() {
        if k == 0 || ids[i as usize] != ids[order[k - 1] as usize] {
            starts.push(k as i32);
            rows.push(ids[i as usize]);
        }
    }
    starts.push(order.len() as i32);
    super::fill(dtable, 0.0)?;
    if rows.is_empty() {
        return Ok(());
    }
    let _role = dev.role(crate::device::Role::Workspace);
    // One upload (one host wait) for the three index arrays, read through views.
    let packed: Vec<i32> = [&order[..], &starts[..], &rows[..]].concat();
    let packed_d = dev.upload(&packed, "embedding backward order, starts, rows")?;
    let args = [
        dout.into(),
        packed_d.arg_at(0),
        packed_d.arg_at(order.len()),
        packed_d.arg_at(order.len() + starts.len()),
        (&*dtable).into(),
        Arg::I32(rows.len() as i32),
        Arg::I32(dim as i32),
    ];
    dev.launch("embedding_backward", cfg(rows.len() * dim), &args)
}
