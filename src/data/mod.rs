//! Data: tokenization (readers, batching and the synthetic set arrive with training).

pub mod dataset;
pub mod tokenizer;
