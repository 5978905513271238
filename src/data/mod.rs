//! Data: tokenization (readers, batching and the synthetic set arrive with training).

pub mod tokenizer;
