//! Fused multi-head self-attention (kernels/attention.cu).
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::{Error, Result};

/// Shapes of one attention call. q, k and v rows are `stride` floats apart and start at the
/// given offsets of their buffers (a fused QKV projection: one buffer, stride 3 H d, offsets
/// 0, H d, 2 H d); out is [B, L, H d].
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub batch: usize,
    pub heads: usize,
    pub len: usize,
    pub head_dim: usize,
    pub stride: usize,
    pub offsets: [usize; 3],
    pub scale: f32,
    pub dropout: f32,
    pub seed: u64,
}

impl Attention {
    fn check(&self) -> Result<()> {
        if self.head_dim == 0 || self.head_dim > 128 {
            return Err(Error::Invalid(format!(
                "attention head size {} (1..=128 supported)",
                self.head_dim
            )));
        }
        if self.stride < self.heads * self.head_dim {
            return Err(Error::Invalid(format!(
                "attention row stride {} is under heads x head size",
                self.stride
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "attention dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    fn cfg(&self) -> LaunchConfig {
        LaunchConfig {
            grid: (
                self.len.div_ceil(4) as u32,
                self.heads as u32,
                self.batch as u32,
            ),
            block: (128, 1, 1),
            shared_bytes: 0,
        }
    }

    fn dims(&self, op: &str) -> Result<[Arg; 4]> {
        let i = |what, v| to_i32(op, what, v).map(Arg::I32);
        Ok([
            i("batch", self.batch)?,
            i("heads", self.heads)?,
            i("len", self.len)?,
            i("head_dim", self.head_dim)?,
        ])
    }

    fn input_span(&self, offset: usize) -> usize {
        offset + (self.batch * self.len - 1) * self.stride + self.heads * self.head_dim
    }
}

fn mask_arg(mask: Option<&Buffer<i32>>) -> Arg {
    mask.map_or(Arg::Null, Arg::from)
}

/// out [B, L, H d] and lse [B, H, L].
pub fn forward(
    a: &Attention,
    qkv: [&Buffer<f32>; 3],
    key_mask: Option<&Buffer<i32>>,
    out: &mut Buffer<f32>,
    lse: &mut Buffer<f32>,
) -> Result<()> {
    const OP: &str = "attention_forward";
    a.check()?;
    for (n, (buf, &off)) in ["q", "k", "v"].iter().zip(qkv.iter().zip(&a.offsets)) {
        need(OP, n, buf, a.input_span(off))?;
    }
    if let Some(m) = key_mask {
        need(OP, "key_mask", m, a.batch * a.len)?;
    }
    need(OP, "out", out, a.batch * a.len * a.heads * a.head_dim)?;
    need(OP, "lse", lse, a.batch * a.heads * a.len)?;
    let [b, h, l, d] = a.dims(OP)?;
    let args = [
        qkv[0].arg_at(a.offsets[0]),
        qkv[1].arg_at(a.offsets[1]),
        qkv[2].arg_at(a.offsets[2]),
        mask_arg(key_mask),
        (&*out).into(),
        (&*lse).into(),
        b,
        h,
        l,
        d,
        to_i32(OP, "stride", a.stride)?.into(),
        a.scale.into(),
        a.dropout.into(),
        Arg::U64(a.seed),
    ];
    if a.head_dim <= TILED_MAX_HEAD_DIM {
        let name = flash_kernel("attention_forward_flash", a);
        qkv[0].device().launch(&name, flash_cfg(a), &args)
    } else {
        qkv[0].device().launch(OP, a.cfg(), &args)
    }
}

/// Each tiled kernel comes in two instances: without dropout (the mask code compiled out) and,
/// named `..._dropout`, with it.
fn flash_kernel(base: &str, a: &Attention) -> String {
    if a.dropout > 0.0 {
        format!("{base}_dropout")
    } else {
        base.to_string()
    }
}

/// Head sizes the tiled kernels take (ATTN_TILE_D in kernels/attention.cu); larger ones go to
/// the warp-per-query kernels.
pub const TILED_MAX_HEAD_DIM: usize = 64;

/// 64 queries per block of 256 threads; the tiles are static shared memory (43 KiB).
fn flash_cfg(a: &Attention) -> LaunchConfig {
    LaunchConfig {
        grid: (a.len.div_ceil(64) as u32, a.heads as u32, a.batch as u32),
        block: (256, 1, 1),
        shared_bytes: 0,
    }
}

/// dq, dk, dv laid out like q, k, v (same stride and offsets) in `grads`; every head column of
/// every row is written. The three may be one buffer (a fused dQKV), hence shared references:
/// the device writes them, and nothing on the host reads them until the launches return.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    a: &Attention,
    qkv: [&Buffer<f32>; 3],
    key_mask: Option<&Buffer<i32>>,
    out: &Buffer<f32>,
    lse: &Buffer<f32>,
    dout: &Buffer<f32>,
    grads: [&Buffer<f32>; 3],
) -> Result<()> {
    a.check()?;
    let dev = dout.device().clone();
    need(
        "attention_backward",
        "dout",
        dout,
        a.batch * a.len * a.heads * a.head_dim,
    )?;
    for (n, (buf, &off)) in ["dq", "dk", "dv"].iter().zip(grads.iter().zip(&a.offsets)) {
        need("attention_backward", n, buf, a.input_span(off))?;
    }
    let delta = {
        let _role = dev.role(crate::device::Role::Workspace);
        dev.alloc::<f32>(a.batch * a.heads * a.len, "attention delta")?
    };
    let [b, h, l, d] = a.dims("attention_backward")?;
    dev.launch(
        "attention_backward_delta",
        a.cfg(),
        &[out.into(), dout.into(), (&delta).into(), b, h, l, d],
    )?;
    let stride = to_i32("attention_backward", "stride", a.stride)?;
    let [dq, dk, dv] = grads;
    let common = |extra: Vec<Arg>| -> Vec<Arg> {
        let mut v = vec![
            qkv[0].arg_at(a.offsets[0]),
            qkv[1].arg_at(a.offsets[1]),
            qkv[2].arg_at(a.offsets[2]),
            mask_arg(key_mask),
            dout.into(),
            lse.into(),
            (&delta).into(),
        ];
        v.extend(extra);
        v.extend([
            b,
            h,
            l,
            d,
            stride.into(),
            a.scale.into(),
            a.dropout.into(),
            Arg::U64(a.seed),
        ]);
        v
    };
    let kv_args = common(vec![dk.arg_at(a.offsets[1]), dv.arg_at(a.offsets[2])]);
    let q_args = common(vec![dq.arg_at(a.offsets[0])]);
    if a.head_dim <= TILED_MAX_HEAD_DIM {
        // 32 keys (queries) per block of 256 threads; the tiles are static shared memory.
        let cfg = LaunchConfig {
            grid: (a.len.div_ceil(32) as u32, a.heads as u32, a.batch as u32),
            block: (256, 1, 1),
            shared_bytes: 0,
        };
        dev.launch(
            &flash_kernel("attention_backward_kv_flash", a),
            cfg,
            &kv_args,
        )?;
        dev.launch(&flash_kernel("attention_backward_q_flash", a), cfg, &q_args)
    } else {
        dev.launch("attention_backward_kv", a.cfg(), &kv_args)?;
        dev.launch("attention_backward_q", a.cfg(), &q_args)
    }
}
