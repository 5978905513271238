//! `emrclass bench`: kernel timings with GFLOP/s, GB/s and the fraction of the card's roofline,
//! beside the baseline a user would otherwise have on the same machine.

use crate::check::to_f32;
use crate::device::Device;
use crate::error::Result;
use crate::model::loss::{ClassificationLoss, LossConfig, LossKind};
use crate::model::rnn::{BiRnn, Cell};
use crate::model::textcnn::{TextCnn, TextCnnConfig};
use crate::ops::{self, Gemm, GemmPlan};
use crate::rng::Rng;

pub mod gemm_plans;
pub mod pretrain_step;
pub mod record;
pub mod step;

use serde::Serialize;
use serde_json::{json, Value};

/// A fraction as a table cell: "41.3%", or "-" where there is none (the simulator).
pub fn percent(fraction: Option<f64>) -> String {
    fraction.map_or("-".to_string(), |f| format!("{:.1}%", f * 100.0))
}

/// DRAM bytes/s the roofline uses on CUDA: a measured device-to-device copy (bytes read plus
/// written), once per process; the simulator has no roofline.
pub fn memory_ceiling(dev: &Device) -> Option<f64> {
    use std::sync::OnceLock;
    static MEASURED: OnceLock<Option<f64>> = OnceLock::new();
    dev.cuda_info()?;
    *MEASURED.get_or_init(|| {
        copy_bandwidth(dev, 256 << 20, 10)
            .ok()
            .map(|c| c.bytes_per_s)
    })
}

#[derive(Serialize)]
pub struct CopyTiming {
    pub what: String,
    pub spec: Value,
    pub bytes: usize,
    pub ms: f64,
    /// Bytes read plus bytes written per second.
    pub bytes_per_s: f64,
    /// The data sheet's figure (memory clock x bus width x 2) for comparison; CUDA only.
    pub nominal_bytes_per_s: Option<f64>,
}

/// A device-to-device copy of `bytes`: the median of `reps` after one warm-up.
pub fn copy_bandwidth(dev: &Device, bytes: usize, reps: usize) -> Result<CopyTiming> {
    let n = bytes / 4;
    let src = dev.zeros::<f32>(n, "copy source")?;
    let mut dst = dev.zeros::<f32>(n, "copy target")?;
    dst.copy_from(&src)?;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        times.push(dev.time_ms(|| dst.copy_from(&src))?);
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    Ok(CopyTiming {
        what: format!("device-to-device copy on {}", dev.describe()),
        spec: json!({"family": "copy", "bytes": n * 4}),
        bytes: n * 4,
        ms,
        bytes_per_s: 2.0 * (n * 4) as f64 / (ms / 1e3),
        nominal_bytes_per_s: dev.cuda_info().map(|i| i.peak_bandwidth()),
    })
}

#[derive(Serialize)]
pub struct GemmTiming {
    pub what: String,
    /// The work, for `--compare-torch` and the JSON record.
    pub spec: Value,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ms: f64,
    pub gflops: f64,
    pub gbytes_per_s: f64,
    /// Achieved / attainable (min of peak FLOP/s and intensity x bandwidth); CUDA only.
    pub roofline: Option<f64>,
}

/// Times the product `g` (densely packed operands) on `dev` with the given plan, or the
/// launcher's choice when None: one warm-up, then the median of `reps`. Also the plan as run,
/// for `gemm_plans::check`.
pub fn gemm(
    dev: &Device,
    g: &Gemm,
    plan: Option<GemmPlan>,
    reps: usize,
) -> Result<(GemmTiming, gemm_plans::TimedPlan)> {
    let (m, n, k) = (g.m, g.n, g.k);
    let mut rng = Rng::new(1);
    let a = dev.upload(&to_f32(&rng.normals(m * k, 1.0)), "A")?;
    let b = dev.upload(&to_f32(&rng.normals(k * n, 1.0)), "B")?;
    let mut c = dev.zeros::<f32>(m * n, "C")?;
    let picked = GemmPlan::for_shape(g, dev.multiprocessors());
    let plan = plan.unwrap_or(picked).as_run(g);
    let mut run = || ops::gemm_with_plan(g, plan, &a, &b, &mut c, None, Default::default());
    run()?;
    dev.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(dev.time_ms(&mut run)?);
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    let layout = format!(
        "{}{}",
        if g.trans_a { "T" } else { "N" },
        if g.trans_b { "T" } else { "N" }
    );
    let mut out = timing(
        format!(
            "emrclass gemm {layout} {} on {}",
            plan.name(),
            dev.describe()
        ),
        dev,
        m,
        n,
        k,
        ms,
    );
    out.spec = json!({"family": "gemm", "m": m, "n": n, "k": k, "trans_a": g.trans_a,
                      "trans_b": g.trans_b, "tile": plan.tile.name(),
                      "splits": plan.splits, "picked": plan == picked});
    let timed = gemm_plans::TimedPlan {
        gemm: *g,
        plan,
        picked: plan == picked,
        ms,
    };
    Ok((out, timed))
}

fn timing(what: String, dev: &Device, m: usize, n: usize, k: usize, ms: f64) -> GemmTiming {
    let flops = 2.0 * (m * n * k) as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
    let secs = ms / 1e3;
    let roofline = dev.cuda_info().zip(memory_ceiling(dev)).map(|(info, bw)| {
        let attainable = info.peak_flops().min(flops / bytes * bw);
        flops / secs / attainable
    });
    GemmTiming {
        what,
        spec: json!({"family": "gemm", "m": m, "n": n, "k": k}),
        m,
        n,
        k,
        ms,
        gflops: flops / secs / 1e9,
        gbytes_per_s: bytes / secs / 1e9,
        roofline,
    }
}

/// The same product as plain f32 loops on one host core (i-k-j order, so the inner loop
/// streams rows): what the simulator's numbers should be read against.
pub fn host_naive_gemm(dev: &Device, m: usize, n: usize, k: usize) -> GemmTiming {
    let mut rng = Rng::new(1);
    let a = to_f32(&rng.normals(m * k, 1.0));
    let b = to_f32(&rng.normals(k * n, 1.0));
    let mut c = vec![0.0f32; m * n];
    let t = std::time::Instant::now();
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            let (row, brow) = (&mut c[i * n..(i + 1) * n], &b[p * n..(p + 1) * n]);
            for (cv, bv) in row.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    }
    std::hint::black_box(&c);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut out = timing("host f32 loops, 1 core (baseline)".into(), dev, m, n, k, ms);
    out.roofline = None;
    out
}

pub fn print_gemm(rows: &[GemmTiming]) {
    println!(
        "{:<64} {:>6} {:>6} {:>6} {:>10} {:>9} {:>8} {:>9}",
        "gemm", "m", "n", "k", "ms", "GFLOP/s", "GB/s", "roofline"
    );
    for r in rows {
        let roof = percent(r.roofline);
        println!(
            "{:<64} {:>6} {:>6} {:>6} {:>10.3} {:>9.2} {:>8.2} {:>9}",
            r.what, r.m, r.n, r.k, r.ms, r.gflops, r.gbytes_per_s, roof
        );
    }
}

#[derive(Serialize)]
pub struct LossTiming {
    pub what: String,
    pub spec: Value,
    pub rows: usize,
    pub classes: usize,
    pub ms: f64,
    pub rows_per_s: f64,
    /// Against the least traffic a fused loss needs: read the logits, write the gradient.
    pub gbytes_per_s: f64,
    /// Fraction of the card's DRAM bandwidth (CUDA only): the loss is memory-bound.
    pub roofline: Option<f64>,
}

/// Times one step of the loss layer (all its kernels, the label upload and the loss read-back,
/// as a training step pays them): one warm-up, then the median of `reps`.
pub fn loss(
    dev: &Device,
    kind: LossKind,
    rows: usize,
    classes: usize,
    reps: usize,
) -> Result<LossTiming> {
    let mut rng = Rng::new(2);
    let mut cfg = LossConfig::new(kind);
    cfg.class_weights = Some(vec![1.0; classes]);
    cfg.similarity = Some((0..classes * classes).map(|_| rng.uniform()).collect());
    let mut layer = ClassificationLoss::new(dev, classes, cfg)?;
    let logits = dev.upload(&to_f32(&rng.normals(rows * classes, 2.0)), "logits")?;
    let labels: Vec<i32> = (0..rows)
        .map(|_| (rng.next_u64() % classes as u64) as i32)
        .collect();
    let mut grad = dev.zeros::<f32>(rows * classes, "grad")?;
    layer.forward_backward(&logits, &labels, &mut grad)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(dev.time_ms(|| {
            layer
                .forward_backward(&logits, &labels, &mut grad)
                .map(|_| ())
        })?);
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    let bytes = 8.0 * (rows * classes) as f64;
    let gbytes_per_s = bytes / (ms / 1e3) / 1e9;
    Ok(LossTiming {
        what: format!("{kind:?} on {}", dev.describe()),
        spec: json!({"family": "loss", "kind": format!("{kind:?}"), "rows": rows, "classes": classes}),
        rows,
        classes,
        ms,
        rows_per_s: rows as f64 / (ms / 1e3),
        gbytes_per_s,
        roofline: memory_ceiling(dev).map(|bw| gbytes_per_s * 1e9 / bw),
    })
}

pub fn print_loss(rows: &[LossTiming]) {
    println!(
        "{:<50} {:>6} {:>7} {:>10} {:>12} {:>8} {:>9}",
        "loss step", "rows", "classes", "ms", "rows/s", "GB/s", "roofline"
    );
    for r in rows {
        let roof = percent(r.roofline);
        println!(
            "{:<50} {:>6} {:>7} {:>10.3} {:>12.0} {:>8.2} {:>9}",
            r.what, r.rows, r.classes, r.ms, r.rows_per_s, r.gbytes_per_s, roof
        );
    }
}

#[derive(Serialize)]
pub struct LayerTiming {
    pub what: String,
    pub spec: Value,
    pub shape: String,
    pub forward_ms: f64,
    pub backward_ms: f64,
    /// Arithmetic of forward + backward (backward counted as twice forward, as is usual).
    pub gflop: f64,
    /// Achieved / peak fp32 FLOP/s (CUDA only).
    pub roofline: Option<f64>,
}

fn layer_timing(
    dev: &Device,
    what: String,
    spec: Value,
    shape: String,
    fwd: &[f64],
    bwd: &[f64],
    forward_flop: f64,
) -> LayerTiming {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, b) = (median(fwd), median(bwd));
    let gflop = 3.0 * forward_flop / 1e9;
    let roofline = dev
        .cuda_info()
        .map(|i| gflop * 1e9 / ((f + b) / 1e3) / i.peak_flops());
    LayerTiming {
        what,
        spec,
        shape,
        forward_ms: f,
        backward_ms: b,
        gflop,
        roofline,
    }
}

/// Forward and backward of a bidirectional GRU / LSTM layer (lengths all `len`).
pub fn rnn(
    dev: &Device,
    cell: Cell,
    batch: usize,
    len: usize,
    input: usize,
    hidden: usize,
    reps: usize,
) -> Result<LayerTiming> {
    let mut rng = Rng::new(3);
    let mut layer = BiRnn::new(dev, cell, input, hidden, &mut rng)?;
    let x = dev.upload(&to_f32(&rng.normals(batch * len * input, 1.0)), "x")?;
    let dout = dev.upload(&to_f32(&rng.normals(batch * len * 2 * hidden, 1.0)), "dout")?;
    let lengths = vec![len as i32; batch];
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for rep in 0..=reps.max(1) {
        let f = dev.time_ms(|| layer.forward(&x, &lengths, len).map(|_| ()))?;
        let b = dev.time_ms(|| layer.backward(&dout).map(|_| ()))?;
        if rep > 0 {
            fwd.push(f);
            bwd.push(b);
        }
    }
    let gh = cell.gates() * hidden;
    let flop = 2.0 * (2.0 * (batch * len) as f64 * (input + hidden) as f64 * gh as f64);
    let shape = format!("B={batch} L={len} in={input} H={hidden}");
    Ok(layer_timing(
        dev,
        format!("Bi{cell:?} on {}", dev.describe()),
        json!({"family": format!("{cell:?}").to_lowercase(), "batch": batch, "len": len, "input": input, "hidden": hidden}),
        shape,
        &fwd,
        &bwd,
        flop,
    ))
}

/// Forward and backward of a Text-CNN layer (lengths all `len`).
pub fn textcnn(
    dev: &Device,
    batch: usize,
    len: usize,
    input: usize,
    filters: usize,
    reps: usize,
) -> Result<LayerTiming> {
    let mut rng = Rng::new(4);
    let config = TextCnnConfig {
        channels: input,
        filters,
        widths: vec![2, 3, 4],
    };
    let flop: f64 = config
        .widths
        .iter()
        .map(|&w| 2.0 * (batch * len.max(w)) as f64 * (input * filters * w) as f64)
        .sum();
    let mut layer = TextCnn::new(dev, config.clone(), &mut rng)?;
    let x = dev.upload(&to_f32(&rng.normals(batch * len * input, 1.0)), "x")?;
    let dpooled = dev.upload(
        &to_f32(&rng.normals(batch * config.out_features(), 1.0)),
        "dpooled",
    )?;
    let lengths = vec![len as i32; batch];
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for rep in 0..=reps.max(1) {
        let f = dev.time_ms(|| layer.forward(&x, &lengths, len).map(|_| ()))?;
        let b = dev.time_ms(|| layer.backward(&dpooled).map(|_| ()))?;
        if rep > 0 {
            fwd.push(f);
            bwd.push(b);
        }
    }
    let shape = format!("B={batch} L={len} in={input} F={filters}x3");
    Ok(layer_timing(
        dev,
        format!("Text-CNN on {}", dev.describe()),
        json!({"family": "textcnn", "batch": batch, "len": len, "input": input, "filters": filters, "widths": [2, 3, 4]}),
        shape,
        &fwd,
        &bwd,
        flop,
    ))
}

pub fn print_layers(rows: &[LayerTiming]) {
    println!(
        "{:<40} {:<28} {:>11} {:>11} {:>9} {:>9}",
        "layer", "shape", "forward ms", "backward ms", "GFLOP/s", "roofline"
    );
    for r in rows {
        let roof = percent(r.roofline);
        let gflops = r.gflop / ((r.forward_ms + r.backward_ms) / 1e3);
        println!(
            "{:<40} {:<28} {:>11.2} {:>11.2} {:>9.2} {:>9}",
            r.what, r.shape, r.forward_ms, r.backward_ms, gflops, roof
        );
    }
}

/// Fused attention forward and backward at [batch, len, heads x head_dim], with the memory the
/// B x H x L x L probabilities would have taken (the kernels never store them).
pub fn attention(
    dev: &Device,
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    reps: usize,
) -> Result<(LayerTiming, usize)> {
    use crate::ops::attention::{self as attn, Attention};
    let mut rng = Rng::new(5);
    let hd = heads * head_dim;
    let n = batch * len * hd;
    let qkv = dev.upload(&to_f32(&rng.normals(3 * n, 1.0)), "qkv")?;
    let mask = dev.upload(&vec![1i32; batch * len], "mask")?;
    let a = Attention {
        batch,
        heads,
        len,
        head_dim,
        stride: 3 * hd,
        offsets: [0, hd, 2 * hd],
        scale: 1.0 / (head_dim as f32).sqrt(),
        dropout: 0.1,
        seed: 1,
    };
    let mut out = dev.alloc::<f32>(n, "out")?;
    let mut lse = dev.alloc::<f32>(batch * heads * len, "lse")?;
    let dout = dev.upload(&to_f32(&rng.normals(n, 1.0)), "dout")?;
    let dqkv = dev.alloc::<f32>(3 * n, "dqkv")?;
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for rep in 0..=reps.max(1) {
        let f =
            dev.time_ms(|| attn::forward(&a, [&qkv, &qkv, &qkv], Some(&mask), &mut out, &mut lse))?;
        let b = dev.time_ms(|| {
            attn::backward(
                &a,
                [&qkv, &qkv, &qkv],
                Some(&mask),
                &out,
                &lse,
                &dout,
                [&dqkv, &dqkv, &dqkv],
            )
        })?;
        if rep > 0 {
            fwd.push(f);
            bwd.push(b);
        }
    }
    // QK^T and PV: 4 B H L^2 d multiply-adds forward.
    let flop = 4.0 * (batch * heads) as f64 * (len * len) as f64 * head_dim as f64;
    let shape = format!("B={batch} L={len} H={heads} d={head_dim}");
    let saved = batch * heads * len * len * 4;
    Ok((
        layer_timing(
            dev,
            format!("attention on {}", dev.describe()),
            json!({"family": "attention", "batch": batch, "len": len, "heads": heads, "head_dim": head_dim, "dropout": 0.1}),
            shape,
            &fwd,
            &bwd,
            flop,
        ),
        saved,
    ))
}

/// One BERT layer (plus embeddings and pooler, small vocabulary) forward and backward.
pub fn encoder_layer(
    dev: &Device,
    batch: usize,
    len: usize,
    hidden: usize,
    heads: usize,
    reps: usize,
) -> Result<LayerTiming> {
    use crate::model::bert::{BertConfig, BertEncoder};
    let config = BertConfig {
        vocab_size: 128,
        hidden_size: hidden,
        num_hidden_layers: 1,
        num_attention_heads: heads,
        intermediate_size: 4 * hidden,
        hidden_act: "gelu".into(),
        layer_norm_eps: 1e-12,
        max_position_embeddings: len.max(1),
        type_vocab_size: 2,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        pad_token_id: 0,
    };
    let mut rng = Rng::new(6);
    let mut enc = BertEncoder::new(dev, config, &mut rng)?;
    let ids: Vec<i32> = (0..batch * len).map(|i| 1 + (i % 127) as i32).collect();
    let mask = vec![1i32; batch * len];
    let dh = dev.upload(&to_f32(&rng.normals(batch * len * hidden, 1.0)), "d hidden")?;
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for rep in 0..=reps.max(1) {
        let f = dev.time_ms(|| {
            enc.forward(&ids, &mask, None, batch, Some(rep as u64))
                .map(|_| ())
        })?;
        let b = dev.time_ms(|| enc.backward(Some(&dh), None))?;
        if rep > 0 {
            fwd.push(f);
            bwd.push(b);
        }
    }
    let tokens = (batch * len) as f64;
    // QKV + output projections (4 H^2) and FFN (8 H^2) per token, plus attention.
    let flop = 2.0 * tokens * 12.0 * (hidden * hidden) as f64
        + 4.0 * batch as f64 * (len * len) as f64 * hidden as f64;
    let shape = format!("B={batch} L={len} H={hidden} heads={heads}");
    Ok(layer_timing(
        dev,
        format!("encoder layer on {}", dev.describe()),
        json!({"family": "encoder", "batch": batch, "len": len, "hidden": hidden, "heads": heads}),
        shape,
        &fwd,
        &bwd,
        flop,
    ))
}
