//! Bidirectional GRU / LSTM over token states, PyTorch semantics (torch.nn.GRU / nn.LSTM with
//! bidirectional=True, batch_first=True, on pack_padded_sequence input): h0 = c0 = 0, the
//! reverse direction starts at each sequence's last real token, outputs at padding are zero.
//!
//! Forward: one GEMM per direction for the input projections of all steps, one transpose of
//! the recurrent weights, one launch of the recurrence for every step of both directions.
//! Backward: one launch of backpropagation through time, then GEMMs for every weight and
//! input gradient. The launch count does not depend on the sequence length.

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::slot::Slot;
pub use crate::ops::rnn::Cell;
use crate::ops::rnn::{self as k, RnnShape};
use crate::ops::{self, Gemm};
use crate::rng::Rng;

/// The eight tensors of a one-layer bidirectional nn.GRU / nn.LSTM, in PyTorch's layouts.
pub struct RnnTensors {
    pub weight_ih: [Vec<f32>; 2],
    pub weight_hh: [Vec<f32>; 2],
    pub bias_ih: [Vec<f32>; 2],
    pub bias_hh: [Vec<f32>; 2],
}

struct Saved {
    shape: RnnShape,
    x: Buffer<f32>,
    lengths: Buffer<i32>,
    out: Buffer<f32>,
    saved: Buffer<f32>,
}

pub struct BiRnn {
    pub cell: Cell,
    pub input: usize,
    pub hidden: usize,
    /// Both directions stacked: w_ih [2][G*H][I], w_hh [2][G*H][H], b_ih and b_hh [2][G*H].
    pub w_ih: Buffer<f32>,
    pub w_hh: Buffer<f32>,
    pub b_ih: Buffer<f32>,
    pub b_hh: Buffer<f32>,
    /// Gradients of the last backward (overwritten), same shapes.
    pub grads: [Buffer<f32>; 4],
    saved: Option<Saved>,
}

impl BiRnn {
    /// Parameters and gradients for the optimizer: `{prefix}.weight_ih`, `.weight_hh`, `.bias_ih`, `.bias_hh`.
    pub fn slots(&mut self, prefix: &str, lr_scale: f32) -> Vec<Slot<'_>> {
        let [g0, g1, g2, g3] = &mut self.grads;
        vec![
            Slot::new(
                format!("{prefix}.weight_ih"),
                &mut self.w_ih,
                g0,
                lr_scale,
                true,
            ),
            Slot::new(
                format!("{prefix}.weight_hh"),
                &mut self.w_hh,
                g1,
                lr_scale,
                true,
            ),
            Slot::new(
                format!("{prefix}.bias_ih"),
                &mut self.b_ih,
                g2,
                lr_scale,
                false,
            ),
            Slot::new(
                format!("{prefix}.bias_hh"),
                &mut self.b_hh,
                g3,
                lr_scale,
                false,
            ),
        ]
    }

    pub fn from_host(
        dev: &Device,
        cell: Cell,
        input: usize,
        hidden: usize,
        t: &RnnTensors,
    ) -> Result<Self> {
        let gh = cell.gates() * hidden;
        if input == 0 || hidden == 0 {
            return Err(Error::Invalid(format!(
                "{cell:?}: input {input}, hidden {hidden}"
            )));
        }
        if hidden > k::max_hidden(cell) {
            return Err(Error::Invalid(format!(
                "{cell:?}: hidden {hidden} is over the supported {}",
                k::max_hidden(cell)
            )));
        }
        let names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"];
        let want = [gh * input, gh * hidden, gh, gh];
        let sets = [&t.weight_ih, &t.weight_hh, &t.bias_ih, &t.bias_hh];
        let mut stacked = Vec::new();
        for ((name, &n), set) in names.iter().zip(&want).zip(sets) {
            for (dir, v) in set.iter().enumerate() {
                if v.len() != n {
                    let suffix = if dir == 1 { "_reverse" } else { "" };
                    return Err(Error::Invalid(format!(
                        "{cell:?} {name}{suffix}: {} values, {n} expected",
                        v.len()
                    )));
                }
            }
            stacked.push(dev.parameter(&[set[0].as_slice(), set[1].as_slice()].concat(), name)?);
        }
        let grads = [
            dev.gradient(2 * want[0], "rnn grad")?,
            dev.gradient(2 * want[1], "rnn grad")?,
            dev.gradient(2 * want[2], "rnn grad")?,
            dev.gradient(2 * want[3], "rnn grad")?,
        ];
        let [w_ih, w_hh, b_ih, b_hh]: [Buffer<f32>; 4] = stacked
            .try_into()
            .map_err(|_| Error::Invalid("rnn".into()))?;
        Ok(BiRnn {
            cell,
            input,
            hidden,
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            grads,
            saved: None,
        })
    }

    /// PyTorch's default initialisation: every tensor U(-1/sqrt(H), 1/sqrt(H)).
    pub fn new(
        dev: &Device,
        cell: Cell,
        input: usize,
        hidden: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let gh = cell.gates() * hidden;
        let bound = 1.0 / (hidden as f64).sqrt();
        let mut u = |n: usize| {
            (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect::<Vec<_>>()
        };
        let t = RnnTensors {
            weight_ih: [u(gh * input), u(gh * input)],
            weight_hh: [u(gh * hidden), u(gh * hidden)],
            bias_ih: [u(gh), u(gh)],
            bias_hh: [u(gh), u(gh)],
        };
        BiRnn::from_host(dev, cell, input, hidden, &t)
    }

    fn gates(&self) -> usize {
        self.cell.gates() * self.hidden
    }

    /// x: [batch, len, input]; lengths 1..=len. Returns out [batch, len, 2 * hidden], which the
    /// layer keeps (as a saved activation) until the next forward.
    pub fn forward(
        &mut self,
        x: &Buffer<f32>,
        lengths: &[i32],
        len: usize,
    ) -> Result<&Buffer<f32>> {
        crate::model::textcnn::check_lengths(lengths, len)?;
        let dev = x.device().clone();
        let (batch, h, gh) = (lengths.len(), self.hidden, self.gates());
        let rows = batch * len;
        if x.len() != rows * self.input {
            return Err(Error::Invalid(format!(
                "{:?} input holds {} values; [{batch}, {len}, {}] expected",
                self.cell,
                x.len(),
                self.input
            )));
        }
        let shape = RnnShape {
            batch,
            len,
            hidden: h,
        };
        let mut xproj = dev.alloc::<f32>(2 * rows * gh, "rnn input projections")?;
        for dir in 0..2 {
            // xproj[dir] = x W_ih[dir]^T + b_ih[dir]
            let g = Gemm {
                offset_b: dir * gh * self.input,
                offset_c: dir * rows * gh,
                offset_bias: dir * gh,
                ..Gemm::new(rows, gh, self.input, false, true)
            };
            ops::gemm(&g, x, &self.w_ih, &mut xproj, Some(&self.b_ih))?;
        }
        let mut whh_t = dev.alloc::<f32>(2 * gh * h, "rnn recurrent weights, transposed")?;
        ops::transpose(&self.w_hh, &mut whh_t, 2, gh, h)?;
        let lengths_dev = dev.upload(lengths, "rnn lengths")?;
        let mut out = dev.zeros::<f32>(rows * 2 * h, "rnn output")?;
        let mut saved =
            dev.alloc::<f32>(2 * rows * k::saved_width(self.cell, h), "rnn saved gates")?;
        k::forward(
            self.cell,
            &xproj,
            &whh_t,
            &self.b_hh,
            &lengths_dev,
            &mut out,
            &mut saved,
            &shape,
        )?;
        // Backward needs the input for dW_ih; a copy keeps the caller free to reuse theirs.
        // (Borrowing it across the step instead is for the memory planner, issue 7.)
        let mut x_copy = dev.alloc::<f32>(x.len(), "rnn saved input")?;
        ops::scale(x, &mut x_copy, 1.0, x.len())?;
        let saved = self.saved.insert(Saved {
            shape,
            x: x_copy,
            lengths: lengths_dev,
            out,
            saved,
        });
        Ok(&saved.out)
    }

    /// dout: [batch, len, 2 * hidden]. Writes the parameter gradients (overwriting them) and
    /// returns dx [batch, len, input] (zero at padding).
    pub fn backward(&mut self, dout: &Buffer<f32>) -> Result<Buffer<f32>> {
        let s = self
            .saved
            .take()
            .ok_or_else(|| Error::Invalid(format!("{:?} backward without forward", self.cell)))?;
        let s = &s;
        let dev = dout.device().clone();
        let (h, gh, rows) = (self.hidden, self.gates(), s.shape.batch * s.shape.len);
        if dout.len() != rows * 2 * h {
            return Err(Error::Invalid(format!(
                "{:?} dout holds {} values, {} expected",
                self.cell,
                dout.len(),
                rows * 2 * h
            )));
        }
        let mut prev = dev.alloc::<f32>(2 * rows * h, "rnn previous states")?;
        k::previous_states(&s.out, &s.lengths, &mut prev, &s.shape)?;
        // Gradients of the input-side and hidden-side pre-activations (the same for LSTM).
        let mut dx_pre = dev.zeros::<f32>(2 * rows * gh, "rnn dxproj")?;
        let dh_pre = match self.cell {
            Cell::Gru => {
                let mut dgh = dev.zeros::<f32>(2 * rows * gh, "rnn dgh")?;
                k::gru_backward(
                    &self.w_hh,
                    &s.saved,
                    &prev,
                    dout,
                    &s.lengths,
                    &mut dx_pre,
                    &mut dgh,
                    &s.shape,
                )?;
                Some(dgh)
            }
            Cell::Lstm => {
                k::lstm_backward(
                    &self.w_hh,
                    &s.saved,
                    dout,
                    &s.lengths,
                    &mut dx_pre,
                    &s.shape,
                )?;
                None
            }
        };
        let dh_pre = dh_pre.as_ref().unwrap_or(&dx_pre);
        let mut ones = dev.alloc::<f32>(rows, "ones")?;
        ops::fill(&mut ones, 1.0)?;
        let mut dx = dev.alloc::<f32>(rows * self.input, "rnn dx")?;
        let [gw_ih, gw_hh, gb_ih, gb_hh] = &mut self.grads;
        // Each direction writes its half of every gradient: added while accumulating.
        let beta = ops::gradient_beta(gw_ih);
        for dir in 0..2 {
            let at = dir * rows * gh;
            // dW_ih = dxproj^T x;  dW_hh = dgh^T h_prev;  biases: column sums as ones^T M.
            let g = Gemm {
                offset_a: at,
                offset_c: dir * gh * self.input,
                beta,
                ..Gemm::new(gh, self.input, rows, true, false)
            };
            ops::gemm(&g, &dx_pre, &s.x, gw_ih, None)?;
            let g = Gemm {
                offset_a: at,
                offset_b: dir * rows * h,
                offset_c: dir * gh * h,
                beta,
                ..Gemm::new(gh, h, rows, true, false)
            };
            ops::gemm(&g, dh_pre, &prev, gw_hh, None)?;
            let g = Gemm {
                offset_b: at,
                offset_c: dir * gh,
                beta,
                ..Gemm::new(1, gh, rows, false, false)
            };
            ops::gemm(&g, &ones, &dx_pre, gb_ih, None)?;
            ops::gemm(&g, &ones, dh_pre, gb_hh, None)?;
            // dx (+)= dxproj W_ih
            let g = Gemm {
                offset_a: at,
                offset_b: dir * gh * self.input,
                beta: dir as f32,
                ..Gemm::new(rows, self.input, gh, false, false)
            };
            ops::gemm(&g, &dx_pre, &self.w_ih, &mut dx, None)?;
        }
        Ok(dx)
    }
}
