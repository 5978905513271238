//! f64 reference of the Text-CNN layer: Conv1d (torch layout [F, C, width]) over token states
//! [B, L, C] with padding treated as zeros, ReLU, and max over each sequence's valid windows
//! (starts 0 ..= max(length - width, 0)), pooled features of all widths side by side.

/// One width's parameters.
pub struct Conv<'a> {
    pub width: usize,
    pub weight: &'a [f64],
    pub bias: &'a [f64],
}

fn windows(length: usize, width: usize) -> usize {
    if length >= width {
        length - width + 1
    } else {
        1
    }
}

/// Gradients of one width: (dW [F, C, width], db [F]).
pub type ConvGrads = (Vec<f64>, Vec<f64>);

/// Pre-activation of filter f over the window starting at t of sequence b.
#[allow(clippy::too_many_arguments)]
fn conv_at(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    c: usize,
    conv: &Conv,
    f: usize,
    b: usize,
    t: usize,
) -> f64 {
    let mut v = conv.bias[f];
    for k in 0..conv.width {
        let pos = t + k;
        if pos >= lengths[b] as usize {
            break; // padding is zero
        }
        for ch in 0..c {
            v += x[(b * len + pos) * c + ch] * conv.weight[(f * c + ch) * conv.width + k];
        }
    }
    v
}

/// Adds the gradient g of filter f's window starting at t of sequence b into (dW, db) and dx.
#[allow(clippy::too_many_arguments)]
fn window_backward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    c: usize,
    conv: &Conv,
    (f, b, t, g): (usize, usize, usize, f64),
    grads: &mut ConvGrads,
    dx: &mut [f64],
) {
    grads.1[f] += g;
    for k in 0..conv.width {
        let pos = t + k;
        if pos >= lengths[b] as usize {
            break;
        }
        for ch in 0..c {
            let wi = (f * c + ch) * conv.width + k;
            grads.0[wi] += g * x[(b * len + pos) * c + ch];
            dx[(b * len + pos) * c + ch] += g * conv.weight[wi];
        }
    }
}

/// Pooled features [B, F * widths] and the winning window per (width, b, f) (None: ReLU gave 0).
pub fn forward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    c: usize,
    filters: usize,
    convs: &[Conv],
) -> (Vec<f64>, Vec<Option<usize>>) {
    let batch = lengths.len();
    let cols = filters * convs.len();
    let mut pooled = vec![0.0; batch * cols];
    let mut winners = vec![None; convs.len() * batch * filters];
    for (wi, conv) in convs.iter().enumerate() {
        for b in 0..batch {
            for f in 0..filters {
                let mut best = 0.0;
                let mut at = None;
                for t in 0..windows(lengths[b] as usize, conv.width) {
                    let v = conv_at(x, lengths, len, c, conv, f, b, t);
                    if v > best {
                        best = v;
                        at = Some(t);
                    }
                }
                pooled[b * cols + wi * filters + f] = best;
                winners[(wi * batch + b) * filters + f] = at;
            }
        }
    }
    (pooled, winners)
}

/// Gradients (dx [B, L, C], per width (dW [F, C, width], db [F])) for the upstream dpooled.
pub fn backward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    c: usize,
    filters: usize,
    convs: &[Conv],
    dpooled: &[f64],
) -> (Vec<f64>, Vec<ConvGrads>) {
    let batch = lengths.len();
    let cols = filters * convs.len();
    let (_, winners) = forward(x, lengths, len, c, filters, convs);
    let mut dx = vec![0.0; x.len()];
    let mut grads = Vec::new();
    for (wi, conv) in convs.iter().enumerate() {
        let mut g = (vec![0.0; conv.weight.len()], vec![0.0; filters]);
        for b in 0..batch {
            for f in 0..filters {
                if let Some(t) = winners[(wi * batch + b) * filters + f] {
                    let up = dpooled[b * cols + wi * filters + f];
                    window_backward(x, lengths, len, c, conv, (f, b, t, up), &mut g, &mut dx);
                }
            }
        }
        grads.push(g);
    }
    (dx, grads)
}

/// Feature maps [B, L, F * widths]: ReLU of the window starting at each real token (zeros past
/// the sequence's end), 0 at padding.
pub fn maps_forward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    c: usize,
    filters: usize,
    convs: &[Conv],
) -> Vec<f64> {
    let batch = lengths.len();
    let cols = filters * convs.len();
    let mut maps = vec![0.0; batch * len * cols];
    for (wi, conv) in convs.iter().enumerate() {
        for b in 0..batch {
            for t in 0..lengths[b] as usize {
                for f in 0..filters {
                    maps[(b * len + t) * cols + wi * filters + f] =
                        conv_at(x, lengths, len, c, conv, f, b, t).max(0.0);
                }
            }
        }
    }
    maps
}

/// Gradients of maps_forward for upstream dmaps: (dx, per width (dW, db)).
pub fn maps_backward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    c: usize,
    filters: usize,
    convs: &[Conv],
    dmaps: &[f64],
) -> (Vec<f64>, Vec<ConvGrads>) {
    let batch = lengths.len();
    let cols = filters * convs.len();
    let mut dx = vec![0.0; x.len()];
    let mut grads = Vec::new();
    for (wi, conv) in convs.iter().enumerate() {
        let mut g = (vec![0.0; conv.weight.len()], vec![0.0; filters]);
        for b in 0..batch {
            for t in 0..lengths[b] as usize {
                for f in 0..filters {
                    if conv_at(x, lengths, len, c, conv, f, b, t) > 0.0 {
                        let up = dmaps[(b * len + t) * cols + wi * filters + f];
                        window_backward(x, lengths, len, c, conv, (f, b, t, up), &mut g, &mut dx);
                    }
                }
            }
        }
        grads.push(g);
    }
    (dx, grads)
}
