//! A parameter as the optimizer sees it: each layer lists its own (`slots`), and
//! `train::optim` steps them without knowing the layers.

use crate::device::Buffer;

/// One parameter as the optimizer sees it.
pub struct Slot<'a> {
    pub name: String,
    pub value: &'a mut Buffer<f32>,
    pub grad: &'a mut Buffer<f32>,
    /// Multiplies the step's learning rate (e.g. a head trained faster than the encoder).
    pub lr_scale: f32,
    /// No weight decay on biases and LayerNorm weights, as is usual for BERT.
    pub decay: bool,
}

impl<'a> Slot<'a> {
    pub fn new(
        name: String,
        value: &'a mut Buffer<f32>,
        grad: &'a mut Buffer<f32>,
        lr_scale: f32,
        decay: bool,
    ) -> Self {
        Slot {
            name,
            value,
            grad,
            lr_scale,
            decay,
        }
    }
}
