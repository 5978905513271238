//! Data: tokenization (readers, batching and the synthetic set arrive with training).

pub mod batching;
pub mod dataset;
pub mod delimited;
pub mod masking;
pub mod synthetic;
pub mod text_encoder;
pub mod tokenizer;
