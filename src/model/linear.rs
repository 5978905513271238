//! A linear layer, torch.nn.Linear semantics: y = x W^T + b with W [out, in].

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::slot::Slot;
use crate::ops::{self, Gemm};
use crate::rng::Rng;

pub struct Linear {
    pub input: usize,
    pub output: usize,
    pub weight: Buffer<f32>,
    pub bias: Buffer<f32>,
    pub weight_grad: Buffer<f32>,
    pub bias_grad: Buffer<f32>,
}

impl Linear {
    pub fn slots(&mut self, prefix: &str, lr_scale: f32) -> Vec<Slot<'_>> {
        vec![
            Slot::new(
                format!("{prefix}.weight"),
                &mut self.weight,
                &mut self.weight_grad,
                lr_scale,
                true,
            ),
            Slot::new(
                format!("{prefix}.bias"),
                &mut self.bias,
                &mut self.bias_grad,
                lr_scale,
                false,
            ),
        ]
    }

    pub fn from_host(
        dev: &Device,
        input: usize,
        output: usize,
        weight: &[f32],
        bias: &[f32],
    ) -> Result<Self> {
        if weight.len() != input * output || bias.len() != output {
            return Err(Error::Invalid(format!(
                "linear: weight of {} and bias of {} values; [{output}, {input}] and [{output}] expected",
                weight.len(),
                bias.len()
            )));
        }
        Ok(Linear {
            input,
            output,
            weight: dev.parameter(weight, "linear weight")?,
            bias: dev.parameter(bias, "linear bias")?,
            weight_grad: dev.gradient(weight.len(), "linear weight grad")?,
            bias_grad: dev.gradient(output, "linear bias grad")?,
        })
    }

    /// torch.nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    pub fn new(dev: &Device, input: usize, output: usize, rng: &mut Rng) -> Result<Self> {
        let bound = 1.0 / (input as f64).sqrt();
        let mut u = |n: usize| {
            (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect::<Vec<_>>()
        };
        let (w, b) = (u(input * output), u(output));
        Linear::from_host(dev, input, output, &w, &b)
    }

    /// x [rows, in] -> [rows, out].
    pub fn forward(&self, x: &Buffer<f32>, rows: usize) -> Result<Buffer<f32>> {
        let mut y = x
            .device()
            .alloc::<f32>(rows * self.output, "linear output")?;
        ops::gemm(
            &Gemm::new(rows, self.output, self.input, false, true),
            x,
            &self.weight,
            &mut y,
            Some(&self.bias),
        )?;
        Ok(y)
    }

    /// Writes the parameter gradients (`ops::write_gradient`) and returns dx [rows, in].
    pub fn backward(
        &mut self,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        rows: usize,
    ) -> Result<Buffer<f32>> {
        ops::write_gradient(&mut self.weight_grad, |g| {
            ops::gemm(
                &Gemm::new(self.output, self.input, rows, true, false),
                dy,
                x,
                g,
                None,
            )
        })?;
        let output = self.output;
        ops::write_gradient(&mut self.bias_grad, |g| {
            ops::sum_columns(dy, g, rows, output)
        })?;
        let mut dx = x.device().alloc::<f32>(rows * self.input, "linear dx")?;
        ops::gemm(
            &Gemm::new(rows, self.input, self.output, false, false),
            dy,
            &self.weight,
            &mut dx,
            None,
        )?;
        Ok(dx)
    }
}
