//! One Rust function per operation: the only code that launches kernels. Each checks that its
//! buffers are large enough for the shapes it is given, so a wrong shape is an error, never an
//! out-of-bounds access on the device.

mod adamw;
pub mod adamw8bit;
pub mod attention;
mod elementwise;
pub mod embedding;
mod gemm;
pub mod layernorm;
pub mod loss;
pub mod multi_tensor;
pub mod rnn;
mod rows;
pub mod seqpool;
mod shapes;
pub mod textcnn;

pub use adamw::{adamw_step, AdamW};
pub use elementwise::{
    add, convert_f16_to_f32, convert_f32_to_f16, copy_block, dropout, fill, gelu_backward,
    gelu_forward, relu_backward, relu_forward, scale, tanh_backward, tanh_forward, transpose,
    Block,
};
pub use gemm::{gemm, gemm_fused, gemm_with_plan, Activation, Epilogue, Gemm, GemmPlan, GemmTile};
pub use rows::{
    reduce_rows_backward, reduce_rows_forward, softmax_rows_backward, softmax_rows_forward,
    sum_columns, sum_columns_of, sum_squares_blocks, sum_squares_partial, Reduce,
};

use crate::device::{Buffer, Role};
use crate::error::Result;

/// Writes a parameter's gradient with `write`: over it, or, while its device accumulates
/// gradients (micro-batches), into a temporary that is then added to it. The temporary and the
/// new sum live only for this call, so accumulation needs no second copy of every gradient.
pub fn write_gradient(
    grad: &mut Buffer<f32>,
    write: impl FnOnce(&mut Buffer<f32>) -> Result<()>,
) -> Result<()> {
    let dev = grad.device().clone();
    if !dev.accumulating_gradients() {
        return write(grad);
    }
    let mut part = dev.alloc::<f32>(grad.len(), "gradient of this micro-batch")?;
    write(&mut part)?;
    let _role = dev.role(Role::Gradients);
    let mut sum = dev.alloc::<f32>(grad.len(), "gradient sum")?;
    add(grad, &part, &mut sum, grad.len())?;
    *grad = sum;
    Ok(())
}

/// The GEMM beta of a gradient written part by part into one buffer: 1 (add) while the device
/// accumulates gradients, else 0 (overwrite).
pub fn gradient_beta(grad: &Buffer<f32>) -> f32 {
    if grad.device().accumulating_gradients() {
        1.0
    } else {
        0.0
    }
}

/// Threads per block that the op functions launch each kernel with (for occupancy reports).
pub fn threads_per_block(kernel: &str) -> u32 {
    match kernel {
        "softmax_rows_forward"
        | "softmax_rows_backward"
        | "reduce_rows_forward"
        | "reduce_rows_backward"
        | "loss_row_stats"
        | "loss_rows_final"
        | "layernorm_forward"
        | "layernorm_backward"
        | "attention_forward"
        | "attention_backward_delta"
        | "attention_backward_kv"
        | "attention_backward_q" => rows::THREADS_PER_BLOCK,
        // Up to 1024 (one per gate row, or 2-4 per hidden unit): the report shows the most.
        "gru_forward" | "gru_backward" | "lstm_forward" | "lstm_backward" => 1024,
        _ => 256,
    }
}
