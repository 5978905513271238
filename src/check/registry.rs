//! Every checked op, in one list. Each entry checks (1) the f64 reference's backward against
//! central finite differences and (2) the kernels against the reference on fresh random inputs
//! of awkward sizes, with outputs NaN-filled before launch. `emrclass gradcheck` prints these
//! rows; the tests assert them. A later op registers itself by adding an entry to `ALL`.

use super::{losses, Row};
use crate::device::Device;
use crate::error::Result;
use crate::model::loss::LossKind::{CrossEntropy, Focal, GhmC, GhmCs, WeightedCrossEntropy};
use crate::rng::Rng;

pub struct OpCheck {
    pub name: &'static str,
    pub gradient: Option<fn(&mut Rng) -> Vec<Row>>,
    pub kernel: fn(&Device, &mut Rng) -> Result<Vec<Row>>,
}

pub static ALL: &[OpCheck] = &[
    OpCheck {
        name: "gemm",
        gradient: Some(super::gemm::gemm_gradient),
        kernel: super::gemm::gemm_kernel,
    },
    OpCheck {
        name: "gemm_epilogue",
        gradient: None,
        kernel: super::gemm_epilogue::kernel,
    },
    OpCheck {
        name: "softmax",
        gradient: Some(super::rows::softmax_gradient),
        kernel: super::rows::softmax_kernel,
    },
    OpCheck {
        name: "reduce",
        gradient: Some(super::rows::reduce_gradient),
        kernel: super::rows::reduce_kernel,
    },
    OpCheck {
        name: "sum_columns",
        gradient: Some(super::rows::sum_columns_gradient),
        kernel: super::rows::sum_columns_kernel,
    },
    OpCheck {
        name: "add",
        gradient: Some(super::elementwise::add_gradient),
        kernel: super::elementwise::add_kernel,
    },
    OpCheck {
        name: "scale",
        gradient: Some(super::elementwise::scale_gradient),
        kernel: super::elementwise::scale_kernel,
    },
    OpCheck {
        name: "gelu",
        gradient: Some(super::elementwise::gelu_gradient),
        kernel: super::elementwise::gelu_kernel,
    },
    OpCheck {
        name: "adamw",
        gradient: None,
        kernel: super::adamw::adamw_kernel,
    },
    OpCheck {
        name: "adamw8bit",
        gradient: None,
        kernel: super::adamw8bit::kernel,
    },
    OpCheck {
        name: "convert_f16",
        gradient: None,
        kernel: super::elementwise::convert_kernel,
    },
    OpCheck {
        name: "attention",
        gradient: Some(super::attention::gradient),
        kernel: super::attention::kernel,
    },
    OpCheck {
        name: "dropout",
        gradient: None,
        kernel: super::elementwise::dropout_kernel,
    },
    OpCheck {
        name: "tanh",
        gradient: Some(super::elementwise::tanh_gradient),
        kernel: super::elementwise::tanh_kernel,
    },
    OpCheck {
        name: "bert_encoder",
        gradient: Some(super::bert::gradient),
        kernel: super::bert::kernel,
    },
    OpCheck {
        name: "layernorm",
        gradient: Some(super::layernorm::gradient),
        kernel: super::layernorm::kernel,
    },
    OpCheck {
        name: "textcnn",
        gradient: Some(super::textcnn::gradient),
        kernel: super::textcnn::kernel,
    },
    OpCheck {
        name: "bigru",
        gradient: Some(|r| super::rnn::gradient(crate::model::rnn::Cell::Gru, r)),
        kernel: |d, r| super::rnn::kernel(crate::model::rnn::Cell::Gru, d, r),
    },
    OpCheck {
        name: "bilstm",
        gradient: Some(|r| super::rnn::gradient(crate::model::rnn::Cell::Lstm, r)),
        kernel: |d, r| super::rnn::kernel(crate::model::rnn::Cell::Lstm, d, r),
    },
    OpCheck {
        name: "seq_pool",
        gradient: Some(super::seqpool::gradient),
        kernel: super::seqpool::kernel,
    },
    OpCheck {
        name: "embedding",
        gradient: Some(super::embedding::gradient),
        kernel: super::embedding::kernel,
    },
    OpCheck {
        name: "mlm_head",
        gradient: Some(super::mlm::gradient),
        kernel: super::mlm::kernel,
    },
    OpCheck {
        name: "head",
        gradient: Some(super::heads::gradient),
        kernel: super::heads::kernel,
    },
    OpCheck {
        name: "loss_ce",
        gradient: Some(|r| losses::gradient(CrossEntropy, r)),
        kernel: |d, r| losses::kernel(CrossEntropy, d, r),
    },
    OpCheck {
        name: "loss_weighted_ce",
        gradient: Some(|r| losses::gradient(WeightedCrossEntropy, r)),
        kernel: |d, r| losses::kernel(WeightedCrossEntropy, d, r),
    },
    OpCheck {
        name: "loss_focal",
        gradient: Some(|r| losses::gradient(Focal, r)),
        kernel: |d, r| losses::kernel(Focal, d, r),
    },
    OpCheck {
        name: "loss_ghmc",
        gradient: Some(|r| losses::gradient(GhmC, r)),
        kernel: |d, r| losses::kernel(GhmC, d, r),
    },
    OpCheck {
        name: "loss_ghmcs",
        gradient: Some(|r| losses::gradient(GhmCs, r)),
        kernel: |d, r| losses::kernel(GhmCs, d, r),
    },
];

/// The entries named (all when `names` is empty), or an error naming the unknown one.
pub fn select(names: &[String]) -> Result<Vec<&'static OpCheck>> {
    if names.is_empty() {
        return Ok(ALL.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            ALL.iter().find(|c| c.name == n).ok_or_else(|| {
                let known: Vec<_> = ALL.iter().map(|c| c.name).collect();
                crate::Error::Invalid(format!("no op named `{n}`; known: {}", known.join(", ")))
            })
        })
        .collect()
}
