//! f64 reference of the bidirectional GRU and LSTM (PyTorch semantics, h0 = c0 = 0, packed
//! variable-length sequences: the reverse direction starts at each sequence's last real token;
//! outputs at padding are zero). Plain loops; backward is textbook backpropagation through time.

use crate::ops::rnn::Cell;

/// Parameters of both directions, PyTorch layouts: w_ih [dir][G*H][I], w_hh [dir][G*H][H],
/// b_ih and b_hh [dir][G*H] (direction 1 is the `_reverse` set).
pub struct RnnParams<'a> {
    pub cell: Cell,
    pub input: usize,
    pub hidden: usize,
    pub w_ih: &'a [f64],
    pub w_hh: &'a [f64],
    pub b_ih: &'a [f64],
    pub b_hh: &'a [f64],
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Positions of a sequence in the order direction `dir` visits them.
fn order(dir: usize, length: usize) -> Vec<usize> {
    if dir == 0 {
        (0..length).collect()
    } else {
        (0..length).rev().collect()
    }
}

/// Per direction and visited position: the gate activations, the new state, and the previous
/// state (what backward needs).
struct Step {
    pos: usize,
    x_pre: Vec<f64>,
    h_pre: Vec<f64>,
    h_prev: Vec<f64>,
    c_prev: Vec<f64>,
}

fn pre_activations(p: &RnnParams, dir: usize, x: &[f64], h: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (i_n, hd, gh) = (p.input, p.hidden, p.cell.gates() * p.hidden);
    let mut xp = vec![0.0; gh];
    let mut hp = vec![0.0; gh];
    for j in 0..gh {
        xp[j] = p.b_ih[dir * gh + j]
            + (0..i_n)
                .map(|k| p.w_ih[(dir * gh + j) * i_n + k] * x[k])
                .sum::<f64>();
        hp[j] = p.b_hh[dir * gh + j]
            + (0..hd)
                .map(|k| p.w_hh[(dir * gh + j) * hd + k] * h[k])
                .sum::<f64>();
    }
    (xp, hp)
}

/// One cell step from pre-activations: (h', c').
fn cell_step(
    cell: Cell,
    hd: usize,
    xp: &[f64],
    hp: &[f64],
    h: &[f64],
    c: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut hn = vec![0.0; hd];
    let mut cn = vec![0.0; hd];
    for u in 0..hd {
        match cell {
            Cell::Gru => {
                let r = sigmoid(xp[u] + hp[u]);
                let z = sigmoid(xp[hd + u] + hp[hd + u]);
                let n = (xp[2 * hd + u] + r * hp[2 * hd + u]).tanh();
                hn[u] = (1.0 - z) * n + z * h[u];
            }
            Cell::Lstm => {
                let i = sigmoid(xp[u] + hp[u]);
                let f = sigmoid(xp[hd + u] + hp[hd + u]);
                let g = (xp[2 * hd + u] + hp[2 * hd + u]).tanh();
                let o = sigmoid(xp[3 * hd + u] + hp[3 * hd + u]);
                cn[u] = f * c[u] + i * g;
                hn[u] = o * cn[u].tanh();
            }
        }
    }
    (hn, cn)
}

fn run(p: &RnnParams, x: &[f64], lengths: &[i32], len: usize) -> (Vec<f64>, Vec<Vec<Vec<Step>>>) {
    let hd = p.hidden;
    let batch = lengths.len();
    let mut out = vec![0.0; batch * len * 2 * hd];
    let mut tape = vec![vec![], vec![]];
    for (dir, dir_tape) in tape.iter_mut().enumerate() {
        for b in 0..batch {
            let mut steps = Vec::new();
            let (mut h, mut c) = (vec![0.0; hd], vec![0.0; hd]);
            for pos in order(dir, lengths[b] as usize) {
                let xt = &x[(b * len + pos) * p.input..(b * len + pos + 1) * p.input];
                let (xp, hp) = pre_activations(p, dir, xt, &h);
                let (hn, cn) = cell_step(p.cell, hd, &xp, &hp, &h, &c);
                out[(b * len + pos) * 2 * hd + dir * hd..][..hd].copy_from_slice(&hn);
                steps.push(Step {
                    pos,
                    x_pre: xp,
                    h_pre: hp,
                    h_prev: h,
                    c_prev: c,
                });
                h = hn;
                c = cn;
            }
            dir_tape.push(steps);
        }
    }
    (out, tape)
}

/// out [B, L, 2H]: forward direction in the first H features, reverse in the second.
pub fn forward(p: &RnnParams, x: &[f64], lengths: &[i32], len: usize) -> Vec<f64> {
    run(p, x, lengths, len).0
}

/// Gradients for upstream dout [B, L, 2H]: (dx, dw_ih, dw_hh, db_ih, db_hh), shaped as the inputs.
pub struct RnnGrads {
    pub dx: Vec<f64>,
    pub w_ih: Vec<f64>,
    pub w_hh: Vec<f64>,
    pub b_ih: Vec<f64>,
    pub b_hh: Vec<f64>,
}

pub fn backward(p: &RnnParams, x: &[f64], lengths: &[i32], len: usize, dout: &[f64]) -> RnnGrads {
    let (hd, i_n, gh) = (p.hidden, p.input, p.cell.gates() * p.hidden);
    let (_, tape) = run(p, x, lengths, len);
    let mut g = RnnGrads {
        dx: vec![0.0; x.len()],
        w_ih: vec![0.0; p.w_ih.len()],
        w_hh: vec![0.0; p.w_hh.len()],
        b_ih: vec![0.0; p.b_ih.len()],
        b_hh: vec![0.0; p.b_hh.len()],
    };
    for (dir, dir_tape) in tape.iter().enumerate() {
        for (b, steps) in dir_tape.iter().enumerate() {
            let (mut dh, mut dc) = (vec![0.0; hd], vec![0.0; hd]);
            for st in steps.iter().rev() {
                let row = b * len + st.pos;
                let (xp, hp) = (&st.x_pre, &st.h_pre);
                // Gradients of the pre-activations, input side (dxp) and hidden side (dhp).
                let mut dxp = vec![0.0; gh];
                let mut dhp = vec![0.0; gh];
                let mut dh_prev = vec![0.0; hd];
                let mut dc_prev = vec![0.0; hd];
                for u in 0..hd {
                    let gout = dh[u] + dout[row * 2 * hd + dir * hd + u];
                    match p.cell {
                        Cell::Gru => {
                            let r = sigmoid(xp[u] + hp[u]);
                            let z = sigmoid(xp[hd + u] + hp[hd + u]);
                            let n = (xp[2 * hd + u] + r * hp[2 * hd + u]).tanh();
                            let dn_pre = gout * (1.0 - z) * (1.0 - n * n);
                            let dz_pre = gout * (st.h_prev[u] - n) * z * (1.0 - z);
                            let dr_pre = dn_pre * hp[2 * hd + u] * r * (1.0 - r);
                            dxp[u] = dr_pre;
                            dxp[hd + u] = dz_pre;
                            dxp[2 * hd + u] = dn_pre;
                            dhp[u] = dr_pre;
                            dhp[hd + u] = dz_pre;
                            dhp[2 * hd + u] = dn_pre * r;
                            dh_prev[u] = gout * z;
                        }
                        Cell::Lstm => {
                            let i = sigmoid(xp[u] + hp[u]);
                            let f = sigmoid(xp[hd + u] + hp[hd + u]);
                            let gg = (xp[2 * hd + u] + hp[2 * hd + u]).tanh();
                            let o = sigmoid(xp[3 * hd + u] + hp[3 * hd + u]);
                            let c = f * st.c_prev[u] + i * gg;
                            let tc = c.tanh();
                            let dct = dc[u] + gout * o * (1.0 - tc * tc);
                            dxp[u] = dct * gg * i * (1.0 - i);
                            dxp[hd + u] = dct * st.c_prev[u] * f * (1.0 - f);
                            dxp[2 * hd + u] = dct * i * (1.0 - gg * gg);
                            dxp[3 * hd + u] = gout * tc * o * (1.0 - o);
                            for m in 0..4 {
                                dhp[m * hd + u] = dxp[m * hd + u]; // both sides add before the gates
                            }
                            dc_prev[u] = dct * f;
                        }
                    }
                }
                let xt = &x[row * i_n..(row + 1) * i_n];
                for j in 0..gh {
                    g.b_ih[dir * gh + j] += dxp[j];
                    g.b_hh[dir * gh + j] += dhp[j];
                    for k in 0..i_n {
                        g.w_ih[(dir * gh + j) * i_n + k] += dxp[j] * xt[k];
                        g.dx[row * i_n + k] += dxp[j] * p.w_ih[(dir * gh + j) * i_n + k];
                    }
                    for k in 0..hd {
                        g.w_hh[(dir * gh + j) * hd + k] += dhp[j] * st.h_prev[k];
                        dh_prev[k] += dhp[j] * p.w_hh[(dir * gh + j) * hd + k];
                    }
                }
                dh = dh_prev;
                dc = dc_prev;
            }
        }
    }
    g
}
