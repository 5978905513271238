//! The fused AdamW step against the reference optimizer step.

use super::{kernel_row, relative_error, up, worst, Row};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, AdamW};
use crate::reference as r;
use crate::rng::Rng;

pub fn adamw_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let hp = AdamW {
        lr: 2e-3,
        weight_decay: 0.05,
        ..AdamW::default()
    };
    for n in [1usize, 257, 100_003] {
        let mut p = rng.normals(n, 1.0);
        let mut m = vec![0.0; n];
        let mut v = vec![0.0; n];
        let (mut pb, mut mb, mut vb) = (
            up(dev, &p, "param")?,
            dev.zeros(n, "m")?,
            dev.zeros(n, "v")?,
        );
        // Three steps, so the moments and bias corrections are exercised past step 1.
        for step in 1..=3u64 {
            let g = rng.normals(n, 1.0);
            r::adamw_step(&hp, step, &mut p, &g, &mut m, &mut v);
            // The kernel scales the gradient itself: give it g / 2 and a scale of 2.
            let half: Vec<f64> = g.iter().map(|v| v / 2.0).collect();
            ops::adamw_step(
                &hp,
                step,
                &mut pb,
                &up(dev, &half, "grad")?,
                &mut mb,
                &mut vb,
                2.0,
            )?;
        }
        let err = relative_error(&pb.to_host()?, &p);
        let err = worst(err, relative_error(&mb.to_host()?, &m));
        let err = worst(err, relative_error(&vb.to_host()?, &v));
        rows.push(kernel_row("adamw_step", dev, format!("n={n} steps=3"), err));
    }
    Ok(rows)
}
