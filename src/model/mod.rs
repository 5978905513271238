//! Layers with explicit forward and backward passes. Each owns its parameters, saved
//! activations and state; the kernels they run are launched through `ops`.

pub mod bert;
pub mod embedding;
pub mod heads;
pub mod imbalance;
pub mod linear;
pub mod loss;
pub mod masked_lm;
pub mod mlm_head;
pub mod rnn;
pub mod slot;
pub mod textcnn;
pub mod window_pool;
